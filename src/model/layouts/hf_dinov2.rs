//! HF `dinov2` and `dinov2_with_registers`: layer scale on both branches, an MLP or SwiGLU,
//! position embeddings for the class token and patches (registers, when there are any, come
//! after the class token without one). `Dinov2Model` pools the class token;
//! `Dinov2ForImageClassification` reads the class token and the mean of the patch tokens.

use anyhow::{bail, Result};
use serde_json::{Map, Value};

use super::{
    architecture, model_type_is, transformers5_layer_name, CheckpointLayout, HfConfigKeys,
};
use crate::model::config::{
    generic_labels, Head, MlpKind, Pooling, PosInterpolation, Variant, ViTConfig,
};
use crate::model::weights::TensorShapes;

/// The architecture of an HF DINOv2 `config.json`, with `Dinov2Config`'s defaults.
pub fn config(json: &Value) -> Result<ViTConfig> {
    let Value::Object(map) = json else {
        bail!("config.json is not a JSON object");
    };
    let mut map: Map<String, Value> = map.clone();
    let defaults = [
        ("hidden_size", Value::from(768)),
        ("num_hidden_layers", Value::from(12)),
        ("num_attention_heads", Value::from(12)),
        ("layer_norm_eps", Value::from(1e-6)),
        ("image_size", Value::from(224)),
        ("patch_size", Value::from(14)),
    ];
    for (key, value) in defaults {
        map.entry(key).or_insert(value);
    }
    let hidden = map["hidden_size"].as_u64().unwrap_or(0) as usize;
    let mlp_ratio = map.get("mlp_ratio").and_then(Value::as_f64).unwrap_or(4.0);
    let swiglu = map
        .get("use_swiglu_ffn")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut intermediate = (hidden as f64 * mlp_ratio) as usize;
    if swiglu {
        intermediate = (intermediate * 2 / 3).div_ceil(8) * 8;
    }
    map.insert("intermediate_size".into(), Value::from(intermediate));
    let registers = match map.get("model_type").and_then(Value::as_str) {
        Some("dinov2_with_registers") => map
            .get("num_register_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(4) as usize,
        _ => 0,
    };
    let json = Value::Object(map);
    let mut config = ViTConfig::from_value(&json)?;
    let variant = &mut config.variant;
    variant.layer_scale = true;
    variant.register_tokens = registers;
    variant.mlp = match swiglu {
        true => MlpKind::SwiGlu,
        false => MlpKind::Standard,
    };
    // transformers resizes the registers model's positions with antialiasing, the plain
    // model's without.
    if registers > 0 {
        variant.pos_interpolation = PosInterpolation::BicubicAntialias;
    }
    let classifier = architecture(&json).is_some_and(|a| a.ends_with("ForImageClassification"));
    if classifier {
        variant.pooling = Pooling::ClassAndMean;
        if config.id2label.is_empty() {
            config.id2label = generic_labels(2);
        }
    } else {
        variant.head = Head::None;
        config.id2label = Vec::new();
    }
    config.validate()?;
    Ok(config)
}

/// `model_type`, `architectures` and the layout's own keys for `config`; `mlp_ratio` and
/// `layerscale_value` are kept from `base` where a SwiGLU width cannot be inverted.
pub fn hf_config(
    config: &ViTConfig,
    base: Option<&Value>,
) -> (&'static str, &'static str, Vec<(&'static str, Value)>) {
    let variant = &config.variant;
    let registers = variant.register_tokens > 0;
    let (model_type, architecture) = match (registers, config.has_head()) {
        (false, false) => ("dinov2", "Dinov2Model"),
        (false, true) => ("dinov2", "Dinov2ForImageClassification"),
        (true, false) => ("dinov2_with_registers", "Dinov2WithRegistersModel"),
        (true, true) => (
            "dinov2_with_registers",
            "Dinov2WithRegistersForImageClassification",
        ),
    };
    let base_ratio = base.and_then(|b| b.get("mlp_ratio")).cloned();
    let mlp_ratio = match (variant.mlp, base_ratio) {
        // A gated MLP has no DINOv2 layout (`Layout::of_variant` refuses it).
        (MlpKind::SwiGlu | MlpKind::Gated, Some(ratio)) => ratio,
        (MlpKind::SwiGlu | MlpKind::Gated, None) => Value::from(4),
        // transformers types `mlp_ratio` as an int.
        (MlpKind::Standard, _) if config.intermediate_size.is_multiple_of(config.hidden_size) => {
            Value::from(config.intermediate_size / config.hidden_size)
        }
        (MlpKind::Standard, _) => {
            Value::from(config.intermediate_size as f64 / config.hidden_size as f64)
        }
    };
    let mut keys = vec![
        ("mlp_ratio", mlp_ratio),
        (
            "use_swiglu_ffn",
            Value::from(variant.mlp == MlpKind::SwiGlu),
        ),
    ];
    match registers {
        true => keys.push(("num_register_tokens", Value::from(variant.register_tokens))),
        // `vit` keeps no mask token (inference never uses one): say so, or HF initialises one
        // and warns (the registers config has no such switch).
        false => keys.push(("use_mask_token", Value::from(false))),
    }
    (model_type, architecture, keys)
}

/// The stored name of a canonical one, as `save_pretrained` writes it.
pub fn stored_name(canonical: &str, config: &ViTConfig) -> String {
    let prefix = match (config.has_head(), config.variant.register_tokens > 0) {
        (false, _) => "",
        (true, false) => "dinov2.",
        (true, true) => "dinov2_with_registers.",
    };
    let Some(rest) = canonical.strip_prefix("vit.") else {
        return canonical.to_string();
    };
    let rest = match rest.strip_prefix("encoder.layer.") {
        Some(layer_rest) => {
            let (layer, name) = layer_rest.split_once('.').unwrap_or((layer_rest, ""));
            let name = [
                ("layernorm_before.", "norm1."),
                ("layernorm_after.", "norm2."),
                ("intermediate.dense.", "mlp.fc1."),
                ("output.dense.", "mlp.fc2."),
            ]
            .iter()
            .find_map(|(from, to)| name.strip_prefix(from).map(|p| format!("{to}{p}")))
            .unwrap_or_else(|| name.to_string());
            format!("encoder.layer.{layer}.{name}")
        }
        None => rest.to_string(),
    };
    format!("{prefix}{rest}")
}

/// DINOv2's module names onto the canonical ones: `norm1`/`norm2` are `layernorm_before`/
/// `layernorm_after`, `mlp.fc1`/`fc2` the `intermediate`/`output` dense layers; the backbone
/// is bare in `Dinov2Model` and under `dinov2.` (or `dinov2_with_registers.`) in the
/// classifier.
pub fn canonical_name(stored: &str) -> Option<String> {
    let name = ["dinov2.", "dinov2_with_registers."]
        .iter()
        .find_map(|prefix| stored.strip_prefix(prefix))
        .unwrap_or(stored);
    if name.starts_with("embeddings.") || name.starts_with("layernorm.") {
        return Some(format!("vit.{name}"));
    }
    let rest = name.strip_prefix("encoder.layer.")?;
    let (layer, rest) = rest.split_once('.')?;
    let rest = if let Some(param) = rest.strip_prefix("norm1.") {
        format!("layernorm_before.{param}")
    } else if let Some(param) = rest.strip_prefix("norm2.") {
        format!("layernorm_after.{param}")
    } else if [
        "mlp.weights_",
        "layer_scale",
        "attention.attention.",
        "attention.output.",
    ]
    .iter()
    .any(|p| rest.starts_with(p))
    {
        rest.to_string()
    } else {
        transformers5_layer_name(rest)?
    };
    Some(format!("vit.encoder.layer.{layer}.{rest}"))
}

/// HF `dinov2` and `dinov2_with_registers`: `Dinov2Model`, `Dinov2ForImageClassification`.
pub struct HfDinov2;

impl CheckpointLayout for HfDinov2 {
    fn name(&self) -> &'static str {
        "HF dinov2"
    }

    fn reads_config(&self, json: &Value) -> bool {
        model_type_is(json, &["dinov2", "dinov2_with_registers"])
    }

    fn config(&self, json: &Value, _: &dyn TensorShapes, _: Option<usize>) -> Result<ViTConfig> {
        config(json)
    }

    fn canonical_name(&self, stored: &str) -> Option<String> {
        canonical_name(stored)
    }

    /// Variants with layer scale or registers (and learned positions): their head, pooling,
    /// registers, MLP (SwiGLU, not a gated MLP of another activation) and interpolation kept.
    fn writes(&self, variant: &Variant) -> Option<Variant> {
        let mine = variant.rotary.is_none()
            && !variant.distillation_token
            && (variant.layer_scale || variant.register_tokens > 0);
        mine.then_some(Variant {
            head: variant.head,
            pooling: variant.pooling,
            register_tokens: variant.register_tokens,
            mlp: match variant.mlp {
                MlpKind::Gated => MlpKind::SwiGlu,
                other => other,
            },
            pos_interpolation: variant.pos_interpolation,
            layer_scale: true,
            ..Variant::default()
        })
    }

    fn hf_config(&self, config: &ViTConfig, base: Option<&Value>) -> HfConfigKeys {
        hf_config(config, base)
    }

    fn stored_name(&self, canonical: &str, config: &ViTConfig) -> String {
        stored_name(canonical, config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dinov2_names_become_canonical() {
        let names = [
            ("embeddings.cls_token", "vit.embeddings.cls_token"),
            (
                "dinov2.embeddings.register_tokens",
                "vit.embeddings.register_tokens",
            ),
            (
                "encoder.layer.2.norm1.weight",
                "vit.encoder.layer.2.layernorm_before.weight",
            ),
            (
                "encoder.layer.2.mlp.fc1.bias",
                "vit.encoder.layer.2.intermediate.dense.bias",
            ),
            (
                "encoder.layer.2.mlp.weights_out.weight",
                "vit.encoder.layer.2.mlp.weights_out.weight",
            ),
            (
                "encoder.layer.2.layer_scale2.lambda1",
                "vit.encoder.layer.2.layer_scale2.lambda1",
            ),
            (
                "encoder.layer.2.attention.o_proj.weight",
                "vit.encoder.layer.2.attention.output.dense.weight",
            ),
            ("dinov2.layernorm.bias", "vit.layernorm.bias"),
        ];
        for (stored, canonical) in names {
            assert_eq!(
                canonical_name(stored).as_deref(),
                Some(canonical),
                "{stored}"
            );
        }
        assert_eq!(canonical_name("classifier.weight"), None);
    }

    #[test]
    fn dinov2_configs() {
        let json = serde_json::json!({"model_type": "dinov2", "hidden_size": 384,
            "num_attention_heads": 6, "image_size": 518, "architectures": ["Dinov2Model"]});
        let parsed = super::config(&json).unwrap();
        assert_eq!(parsed.intermediate_size, 1536);
        assert_eq!(parsed.patch_size, 14);
        assert_eq!(parsed.num_positions(), 37 * 37 + 1);
        assert_eq!(parsed.variant.head, Head::None);
        let json = serde_json::json!({"model_type": "dinov2_with_registers", "hidden_size": 64,
            "num_attention_heads": 2, "use_swiglu_ffn": true, "num_labels": 3,
            "architectures": ["Dinov2WithRegistersForImageClassification"]});
        let parsed = super::config(&json).unwrap();
        assert_eq!(parsed.intermediate_size, 176);
        assert_eq!(parsed.variant.register_tokens, 4);
        assert_eq!(parsed.variant.pooling, Pooling::ClassAndMean);
        assert_eq!(parsed.variant.pooled_width(64), 128);
    }
}
