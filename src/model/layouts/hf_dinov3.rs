//! HF `dinov3_vit`: `DINOv3ViTModel` (and `DINOv3ViTBackbone`, the same tensors). No absolute
//! positions: 2D rotary embeddings over patch centres normalised to `[-1, 1]` turn the patch
//! tokens' queries and keys (class and register tokens are not turned); layer scale on both
//! branches; a bias flag per projection (`query_bias`, `key_bias`, `value_bias`,
//! `proj_bias`, `mlp_bias`); a plain or gated MLP. The model pools the class token after the
//! final norm (`pooler_output`). Training-time position augmentations (`pos_embed_shift`,
//! `_jitter`, `_rescale`) do not apply to inference and are ignored.
//!
//! transformers (5.23) has no DINOv3 classifier; `vit finetune` writes one as
//! `DINOv3ViTForImageClassification`: the backbone's tensors, then a linear `classifier` on
//! the class token and the mean of the patch tokens, concatenated (as HF's
//! `Dinov2ForImageClassification`). HF's `DINOv3ViTModel` loads its backbone.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use super::{architecture, model_type_is, CheckpointLayout, HfConfigKeys};
use crate::model::config::{
    generic_labels, Biases, Head, MlpKind, Pooling, RotaryEmbedding, Variant, ViTConfig,
};
use crate::model::weights::TensorShapes;
use crate::preprocess::PreprocessConfig;

/// The architectures this layout reads: HF's two backbones and `vit`'s classifier.
const ARCHITECTURES: [&str; 3] = ["DINOv3ViTModel", "DINOv3ViTBackbone", CLASSIFIER];

/// The classifier `vit finetune` writes.
const CLASSIFIER: &str = "DINOv3ViTForImageClassification";

/// The architecture of an HF DINOv3 ViT `config.json`, with `DINOv3ViTConfig`'s defaults.
pub fn config(json: &Value) -> Result<ViTConfig> {
    let Value::Object(map) = json else {
        bail!("config.json is not a JSON object");
    };
    if let Some(other) = architecture(json).filter(|a| !ARCHITECTURES.contains(a)) {
        bail!(
            "architecture {other:?} is not supported for dinov3_vit (supported: {})",
            ARCHITECTURES.join(", ")
        );
    }
    let mut map: Map<String, Value> = map.clone();
    let defaults = [
        ("hidden_size", Value::from(384)),
        ("intermediate_size", Value::from(1536)),
        ("num_hidden_layers", Value::from(12)),
        ("num_attention_heads", Value::from(6)),
        ("layer_norm_eps", Value::from(1e-5)),
        ("image_size", Value::from(224)),
        ("patch_size", Value::from(16)),
    ];
    for (key, value) in defaults {
        map.entry(key).or_insert(value);
    }
    // DINOv3 has no `qkv_bias`: its flags are read below.
    map.remove("qkv_bias");
    let json = Value::Object(map);
    let mut config = ViTConfig::from_value(&json)?;
    config.biases = Biases {
        query: flag(&json, "query_bias", true)?,
        key: flag(&json, "key_bias", false)?,
        value: flag(&json, "value_bias", true)?,
        output: flag(&json, "proj_bias", true)?,
        mlp: flag(&json, "mlp_bias", true)?,
    };
    let theta = match json.get("rope_theta") {
        None => 100.0,
        Some(value) => value.as_f64().context("rope_theta is not a number")?,
    };
    let registers = match json.get("num_register_tokens") {
        None => 0,
        Some(value) => value
            .as_u64()
            .context("num_register_tokens is not a non-negative integer")?
            as usize,
    };
    let variant = &mut config.variant;
    variant.absolute_positions = false;
    variant.rotary = Some(RotaryEmbedding::dinov3(theta));
    variant.register_tokens = registers;
    variant.layer_scale = true;
    variant.mlp = match flag(&json, "use_gated_mlp", false)? {
        true => MlpKind::Gated,
        false => MlpKind::Standard,
    };
    match architecture(&json) == Some(CLASSIFIER) {
        true => {
            variant.pooling = Pooling::ClassAndMean;
            variant.head = Head::Linear;
            if config.id2label.is_empty() {
                config.id2label = generic_labels(2);
            }
        }
        false => {
            variant.pooling = Pooling::Class;
            variant.head = Head::None;
            config.id2label = Vec::new();
        }
    }
    config.validate()?;
    Ok(config)
}

/// A boolean key of the config, `default` when absent; any other type is an error.
fn flag(json: &Value, key: &str, default: bool) -> Result<bool> {
    match json.get(key) {
        None => Ok(default),
        Some(value) => value
            .as_bool()
            .with_context(|| format!("{key} is {value}, not true or false")),
    }
}

/// `model_type`, `architectures` and the layout's own keys for `config`.
pub fn hf_config(config: &ViTConfig) -> (&'static str, &'static str, Vec<(&'static str, Value)>) {
    let (variant, biases) = (&config.variant, config.biases);
    let theta = variant.rotary.map_or(100.0, |rotary| rotary.theta);
    let keys = vec![
        ("intermediate_size", Value::from(config.intermediate_size)),
        ("query_bias", Value::from(biases.query)),
        ("key_bias", Value::from(biases.key)),
        ("value_bias", Value::from(biases.value)),
        ("proj_bias", Value::from(biases.output)),
        ("mlp_bias", Value::from(biases.mlp)),
        ("rope_theta", Value::from(theta)),
        ("num_register_tokens", Value::from(variant.register_tokens)),
        ("use_gated_mlp", Value::from(variant.mlp == MlpKind::Gated)),
    ];
    let architecture = match config.has_head() {
        true => CLASSIFIER,
        false => "DINOv3ViTModel",
    };
    ("dinov3_vit", architecture, keys)
}

/// Pairs of DINOv3 module names and canonical ones inside a layer.
const LAYER_NAMES: [(&str, &str); 9] = [
    ("norm1.", "layernorm_before."),
    ("norm2.", "layernorm_after."),
    ("attention.q_proj.", "attention.attention.query."),
    ("attention.k_proj.", "attention.attention.key."),
    ("attention.v_proj.", "attention.attention.value."),
    ("attention.o_proj.", "attention.output.dense."),
    ("mlp.gate_proj.", "intermediate.gate."),
    ("mlp.up_proj.", "intermediate.dense."),
    ("mlp.down_proj.", "output.dense."),
];

/// Pairs of DINOv3 names and canonical ones outside the layers.
const OTHER_NAMES: [(&str, &str); 6] = [
    ("embeddings.cls_token", "vit.embeddings.cls_token"),
    (
        "embeddings.register_tokens",
        "vit.embeddings.register_tokens",
    ),
    (
        "embeddings.patch_embeddings.",
        "vit.embeddings.patch_embeddings.projection.",
    ),
    ("embeddings.mask_token", "vit.embeddings.mask_token"),
    ("norm.", "vit.layernorm."),
    ("classifier.", "classifier."),
];

/// DINOv3's names onto the canonical ones: `layer.N.` (`model.layer.N.` in memory) is
/// `vit.encoder.layer.N.`, `norm1`/`norm2` the layer norms, `q/k/v/o_proj` the attention's
/// projections, `up_proj`/`down_proj` the MLP's dense layers and `gate_proj` its gate.
pub fn canonical_name(stored: &str) -> Option<String> {
    let name = stored.strip_prefix("model.").unwrap_or(stored);
    if let Some(rest) = name.strip_prefix("layer.") {
        let (layer, rest) = rest.split_once('.')?;
        let renamed = LAYER_NAMES
            .iter()
            .find_map(|(from, to)| rest.strip_prefix(from).map(|p| format!("{to}{p}")))
            .or_else(|| rest.starts_with("layer_scale").then(|| rest.to_string()))?;
        return Some(format!("vit.encoder.layer.{layer}.{renamed}"));
    }
    OTHER_NAMES
        .iter()
        .find_map(|(from, to)| name.strip_prefix(from).map(|p| format!("{to}{p}")))
}

/// The stored name of a canonical one, as `save_pretrained` writes it.
pub fn stored_name(canonical: &str) -> String {
    if let Some(rest) = canonical.strip_prefix("vit.encoder.layer.") {
        let (layer, rest) = rest.split_once('.').unwrap_or((rest, ""));
        let renamed = LAYER_NAMES
            .iter()
            .find_map(|(to, from)| rest.strip_prefix(from).map(|p| format!("{to}{p}")))
            .unwrap_or_else(|| rest.to_string());
        return format!("layer.{layer}.{renamed}");
    }
    OTHER_NAMES
        .iter()
        .find_map(|(to, from)| canonical.strip_prefix(from).map(|p| format!("{to}{p}")))
        .unwrap_or_else(|| canonical.to_string())
}

/// The mask token (pre-training only) and an empty register tensor (HF keeps one of
/// `(1, 0, hidden)` in models without registers).
pub fn unused_by_design(canonical: &str, config: &ViTConfig) -> bool {
    canonical == "vit.embeddings.mask_token"
        || (canonical == "vit.embeddings.register_tokens" && config.variant.register_tokens == 0)
}

/// HF `dinov3_vit`: `DINOv3ViTModel`, `DINOv3ViTBackbone`.
pub struct HfDinov3;

impl CheckpointLayout for HfDinov3 {
    fn name(&self) -> &'static str {
        "HF dinov3_vit"
    }

    fn reads_config(&self, json: &Value) -> bool {
        model_type_is(json, &["dinov3_vit"])
    }

    fn config(&self, json: &Value, _: &dyn TensorShapes, _: Option<usize>) -> Result<ViTConfig> {
        config(json)
    }

    fn default_preprocess(&self, _: Option<&Value>, _: &ViTConfig) -> Result<PreprocessConfig> {
        Ok(PreprocessConfig::dinov3())
    }

    fn canonical_name(&self, stored: &str) -> Option<String> {
        canonical_name(stored)
    }

    fn unused_by_design(&self, canonical: &str, config: &ViTConfig) -> bool {
        unused_by_design(canonical, config)
    }

    /// Variants with rotary embeddings: their rotary embedding, registers and MLP kept, a
    /// backbone or `vit`'s classifier.
    fn writes(&self, variant: &Variant) -> Option<Variant> {
        let (head, pooling) = match variant.head {
            Head::None => (Head::None, Pooling::Class),
            _ => (Head::Linear, Pooling::ClassAndMean),
        };
        variant.rotary.is_some().then_some(Variant {
            absolute_positions: false,
            rotary: variant.rotary,
            register_tokens: variant.register_tokens,
            mlp: match variant.mlp {
                MlpKind::SwiGlu => MlpKind::Standard,
                other => other,
            },
            layer_scale: true,
            head,
            pooling,
            ..Variant::default()
        })
    }

    fn hf_config(&self, config: &ViTConfig, _: Option<&Value>) -> HfConfigKeys {
        hf_config(config)
    }

    fn stored_name(&self, canonical: &str, _: &ViTConfig) -> String {
        stored_name(canonical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dinov3_names_become_canonical_and_back() {
        let names = [
            ("embeddings.cls_token", "vit.embeddings.cls_token"),
            (
                "embeddings.patch_embeddings.weight",
                "vit.embeddings.patch_embeddings.projection.weight",
            ),
            (
                "layer.3.attention.k_proj.weight",
                "vit.encoder.layer.3.attention.attention.key.weight",
            ),
            (
                "layer.3.attention.o_proj.bias",
                "vit.encoder.layer.3.attention.output.dense.bias",
            ),
            (
                "layer.3.mlp.gate_proj.weight",
                "vit.encoder.layer.3.intermediate.gate.weight",
            ),
            (
                "layer.3.mlp.down_proj.weight",
                "vit.encoder.layer.3.output.dense.weight",
            ),
            (
                "layer.3.layer_scale2.lambda1",
                "vit.encoder.layer.3.layer_scale2.lambda1",
            ),
            ("norm.bias", "vit.layernorm.bias"),
        ];
        for (stored, canonical) in names {
            assert_eq!(
                canonical_name(stored).as_deref(),
                Some(canonical),
                "{stored}"
            );
            assert_eq!(stored_name(canonical), stored);
        }
        assert_eq!(
            canonical_name("model.layer.0.norm1.weight").as_deref(),
            Some("vit.encoder.layer.0.layernorm_before.weight")
        );
        assert_eq!(canonical_name("pooler.dense.weight"), None);
    }

    #[test]
    fn dinov3_configs_take_hf_defaults_and_refuse_wrong_types() {
        let json = serde_json::json!({"model_type": "dinov3_vit"});
        let parsed = config(&json).unwrap();
        assert_eq!((parsed.hidden_size, parsed.patch_size), (384, 16));
        assert!(!parsed.biases.key);
        assert!(parsed.biases.query && parsed.biases.output && parsed.biases.mlp);
        assert_eq!(parsed.variant.rotary.map(|r| r.theta), Some(100.0));
        assert!(!parsed.variant.absolute_positions);
        for (key, value) in [
            ("key_bias", serde_json::json!("yes")),
            ("rope_theta", serde_json::json!(null)),
            ("num_register_tokens", serde_json::json!(-1)),
            ("use_gated_mlp", serde_json::json!(1)),
        ] {
            let json = serde_json::json!({"model_type": "dinov3_vit", key: value});
            let err = format!("{:#}", config(&json).unwrap_err());
            assert!(err.contains(key), "{key}: {err}");
        }
        let json = serde_json::json!({"model_type": "dinov3_vit", "hidden_size": 40,
            "num_attention_heads": 4});
        let err = format!("{:#}", config(&json).unwrap_err());
        assert!(err.contains("divisible by 4"), "{err}");
    }
}
