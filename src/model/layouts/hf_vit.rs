//! HF `vit`: `ViTForImageClassification` and `ViTModel` (whose pooler we leave unused, as
//! embedding users take the class token after the final norm).

use anyhow::Result;
use serde_json::Value;

use super::{
    architecture, model_type_is, transformers5_layer_name, CheckpointLayout, HfConfigKeys,
};
use crate::model::config::{generic_labels, Head, Variant, ViTConfig};
use crate::model::weights::TensorShapes;

/// The architecture of an HF ViT `config.json`; `ViTModel` has no head.
pub fn config(json: &Value) -> Result<ViTConfig> {
    let mut config = ViTConfig::from_value(json)?;
    if architecture(json) == Some("ViTModel") {
        config.variant.head = Head::None;
        config.id2label = Vec::new();
    } else if config.id2label.is_empty() {
        config.id2label = generic_labels(2);
    }
    config.validate()?;
    Ok(config)
}

/// `model_type`, `architectures` and the layout's own keys for `config`.
pub fn hf_config(config: &ViTConfig) -> (&'static str, &'static str, Vec<(&'static str, Value)>) {
    let architecture = match config.has_head() {
        true => "ViTForImageClassification",
        false => "ViTModel",
    };
    let keys = vec![("intermediate_size", Value::from(config.intermediate_size))];
    ("vit", architecture, keys)
}

/// The stored name of a canonical one: the same, bare (without `vit.`) in a `ViTModel`.
pub fn stored_name(canonical: &str, config: &ViTConfig) -> String {
    match (config.has_head(), canonical.strip_prefix("vit.")) {
        (false, Some(rest)) => rest.to_string(),
        _ => canonical.to_string(),
    }
}

/// HF ViT's names are the canonical ones; a bare `ViTModel`'s get the `vit.` prefix, and
/// transformers 5's module names their checkpoint names.
pub fn canonical_name(stored: &str) -> Option<String> {
    let bare = [
        "embeddings.",
        "encoder.",
        "layers.",
        "layernorm.",
        "pooler.",
    ]
    .iter()
    .any(|p| stored.starts_with(p));
    let name = match bare {
        true => format!("vit.{stored}"),
        false => stored.to_string(),
    };
    let Some(rest) = name.strip_prefix("vit.layers.") else {
        return bare.then_some(name);
    };
    let (layer, rest) = rest.split_once('.')?;
    let rest = match rest.starts_with("layernorm_") {
        true => rest.to_string(),
        false => transformers5_layer_name(rest)?,
    };
    Some(format!("vit.encoder.layer.{layer}.{rest}"))
}

/// HF `vit`: `ViTModel`, `ViTForImageClassification` (and configs without a `model_type`).
pub struct HfVit;

impl CheckpointLayout for HfVit {
    fn name(&self) -> &'static str {
        "HF vit"
    }

    fn reads_config(&self, json: &Value) -> bool {
        json.get("model_type").is_none() || model_type_is(json, &["vit"])
    }

    fn config(&self, json: &Value, _: &dyn TensorShapes, _: Option<usize>) -> Result<ViTConfig> {
        config(json)
    }

    fn canonical_name(&self, stored: &str) -> Option<String> {
        canonical_name(stored)
    }

    /// The plain variant, with or without its head.
    fn writes(&self, variant: &Variant) -> Option<Variant> {
        let plain = Variant::default();
        let other_layout = variant.rotary.is_some()
            || variant.distillation_token
            || variant.layer_scale
            || variant.register_tokens > 0;
        (!other_layout).then_some(Variant {
            head: variant.head,
            ..plain
        })
    }

    fn hf_config(&self, config: &ViTConfig, _: Option<&Value>) -> HfConfigKeys {
        hf_config(config)
    }

    fn stored_name(&self, canonical: &str, config: &ViTConfig) -> String {
        stored_name(canonical, config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformers_5_module_names_become_checkpoint_names() {
        let names = [
            (
                "vit.layers.3.attention.q_proj.weight",
                "vit.encoder.layer.3.attention.attention.query.weight",
            ),
            (
                "layers.3.attention.k_proj.bias",
                "vit.encoder.layer.3.attention.attention.key.bias",
            ),
            (
                "vit.layers.3.attention.v_proj.weight",
                "vit.encoder.layer.3.attention.attention.value.weight",
            ),
            (
                "vit.layers.3.attention.o_proj.bias",
                "vit.encoder.layer.3.attention.output.dense.bias",
            ),
            (
                "vit.layers.11.mlp.fc1.weight",
                "vit.encoder.layer.11.intermediate.dense.weight",
            ),
            (
                "layers.11.mlp.fc2.bias",
                "vit.encoder.layer.11.output.dense.bias",
            ),
            (
                "vit.layers.0.layernorm_after.weight",
                "vit.encoder.layer.0.layernorm_after.weight",
            ),
            ("embeddings.cls_token", "vit.embeddings.cls_token"),
            ("layernorm.bias", "vit.layernorm.bias"),
        ];
        for (stored, canonical) in names {
            assert_eq!(
                canonical_name(stored).as_deref(),
                Some(canonical),
                "{stored}"
            );
        }
        assert_eq!(canonical_name("classifier.bias"), None);
        assert_eq!(canonical_name("vit.layers.0.attention.x_proj.weight"), None);
    }

    #[test]
    fn vit_model_has_no_head() {
        let json = serde_json::json!({"architectures": ["ViTModel"], "hidden_size": 64,
            "num_attention_heads": 4});
        let parsed = super::config(&json).unwrap();
        assert_eq!(parsed.variant.head, Head::None);
        assert_eq!(parsed.num_labels(), 0);
    }
}
