//! HF Llama 4's vision encoder: `Llama4VisionModel` (`llama4_vision_model`), and the
//! `vision_model.` tensors of a `Llama4ForConditionalGeneration` checkpoint (`llama4`), whose
//! language model and projector are mapped but never read.
//!
//! The patch projection is an unfold and a matrix without bias (the same numbers as a
//! convolution's kernel, read as one); the class token comes after the patches, its position
//! embedding last in `positional_embedding_vlm`; `layernorm_pre` before the blocks,
//! `layernorm_post` after; 2D rotary embeddings on the patches' grid indices from 1 (columns'
//! angles, then rows'), adjacent values as complex pairs, the class token not turned; the
//! pixel-shuffle adapter on the patch tokens. As HF's modules do, every layer norm has eps
//! 1e-5 and every activation is the exact GELU whatever `norm_eps` and `hidden_act` say, and
//! the model runs at `image_size` only (its image processor cuts images into tiles of it).

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use super::{architecture, model_type_is, CheckpointLayout};
use crate::model::config::{
    Biases, Head, PixelShuffleAdapter, Pooling, PosInterpolation, RotaryEmbedding, ViTConfig,
};
use crate::model::weights::TensorShapes;
use crate::preprocess::PreprocessConfig;

/// `Llama4VisionConfig`'s defaults for the keys `vit` reads.
const DEFAULTS: [(&str, f64); 6] = [
    ("hidden_size", 768.0),
    ("num_hidden_layers", 34.0),
    ("num_attention_heads", 16.0),
    ("intermediate_size", 5632.0),
    ("image_size", 448.0),
    ("patch_size", 14.0),
];

/// The vision part of a `config.json`: `vision_config` of a `llama4` model, the whole of a
/// `llama4_vision_model`.
fn vision_json(json: &Value) -> Result<&Value> {
    match model_type_is(json, &["llama4"]) {
        true => {
            if let Some(other) =
                architecture(json).filter(|a| *a != "Llama4ForConditionalGeneration")
            {
                bail!("architecture {other:?} is not supported for llama4 (supported: Llama4ForConditionalGeneration)");
            }
            json.get("vision_config")
                .filter(|v| v.is_object())
                .context("a llama4 config.json without a vision_config object")
        }
        false => {
            if let Some(other) = architecture(json).filter(|a| *a != "Llama4VisionModel") {
                bail!("architecture {other:?} is not supported for llama4_vision_model (supported: Llama4VisionModel)");
            }
            Ok(json)
        }
    }
}

/// A number of the config, `default` when absent.
fn number(json: &Value, key: &str, default: f64) -> Result<f64> {
    match json.get(key) {
        None => Ok(default),
        Some(value) => value
            .as_f64()
            .with_context(|| format!("{key} is {value}, not a number")),
    }
}

/// A size of the config (a positive integer), `default` when absent.
fn size(json: &Value, key: &str, default: usize) -> Result<usize> {
    match json.get(key) {
        None => Ok(default),
        Some(value) => value
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .with_context(|| format!("{key} is {value}, not a positive integer")),
    }
}

/// The architecture of a Llama 4 vision `config.json` (either model type).
pub fn config(json: &Value) -> Result<ViTConfig> {
    let vision = vision_json(json)?;
    let Value::Object(map) = vision else {
        bail!("config.json is not a JSON object");
    };
    let mut map: Map<String, Value> = map.clone();
    for (key, value) in DEFAULTS {
        map.entry(key).or_insert(Value::from(value as u64));
    }
    // HF's modules use neither: nn.LayerNorm's default eps and nn.GELU() throughout.
    map.insert("layer_norm_eps".into(), Value::from(1e-5));
    map.insert("hidden_act".into(), Value::from("gelu"));
    for key in ["qkv_bias", "id2label", "label2id", "num_labels"] {
        map.remove(key);
    }
    let vision = Value::Object(map);
    let mut config = ViTConfig::from_value(&vision)?;
    config.biases = Biases::with_qkv(true);
    config.id2label = Vec::new();
    let theta = match vision.get("rope_parameters") {
        Some(parameters) => {
            number(parameters, "rope_theta", 10_000.0).context("rope_parameters")?
        }
        None => number(&vision, "rope_theta", 10_000.0)?,
    };
    let adapter = PixelShuffleAdapter {
        ratio: number(&vision, "pixel_shuffle_ratio", 0.5)?,
        hidden: size(&vision, "projector_input_dim", 4096)?,
        output: size(&vision, "projector_output_dim", 4096)?,
    };
    let variant = &mut config.variant;
    variant.rotary = Some(RotaryEmbedding::llama4(theta));
    variant.class_token_last = true;
    variant.pos_interpolation = PosInterpolation::Fixed;
    variant.patch_bias = false;
    variant.norm_pre = true;
    variant.adapter = Some(adapter);
    variant.pooling = Pooling::Mean;
    variant.head = Head::None;
    config.validate()?;
    Ok(config)
}

/// Pairs of Llama 4 module names and canonical ones inside a layer.
const LAYER_NAMES: [(&str, &str); 8] = [
    ("input_layernorm.", "layernorm_before."),
    ("post_attention_layernorm.", "layernorm_after."),
    ("self_attn.q_proj.", "attention.attention.query."),
    ("self_attn.k_proj.", "attention.attention.key."),
    ("self_attn.v_proj.", "attention.attention.value."),
    ("self_attn.o_proj.", "attention.output.dense."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
];

/// Pairs of Llama 4 names and canonical ones outside the layers.
const OTHER_NAMES: [(&str, &str); 7] = [
    ("class_embedding", "vit.embeddings.cls_token"),
    (
        "positional_embedding_vlm",
        "vit.embeddings.position_embeddings",
    ),
    (
        "patch_embedding.linear.weight",
        "vit.embeddings.patch_embeddings.projection.weight",
    ),
    ("layernorm_pre.", "vit.pre_layernorm."),
    ("layernorm_post.", "vit.layernorm."),
    ("vision_adapter.mlp.fc1.", "adapter.fc1."),
    ("vision_adapter.mlp.fc2.", "adapter.fc2."),
];

/// The parts of a `Llama4ForConditionalGeneration` checkpoint that are not the vision
/// encoder.
const OTHER_TOWERS: [&str; 4] = [
    "language_model.",
    "multi_modal_projector.",
    "model.language_model.",
    "model.multi_modal_projector.",
];

/// Llama 4's names onto the canonical ones (`vision_model.` or `model.vision_model.` in a
/// whole checkpoint): `model.layers.N.` is `vit.encoder.layer.N.`.
pub fn canonical_name(stored: &str) -> Option<String> {
    let name = ["model.vision_model.", "vision_model."]
        .iter()
        .find_map(|prefix| stored.strip_prefix(prefix))
        .unwrap_or(stored);
    if let Some(rest) = name.strip_prefix("model.layers.") {
        let (layer, rest) = rest.split_once('.')?;
        let renamed = LAYER_NAMES
            .iter()
            .find_map(|(from, to)| rest.strip_prefix(from).map(|p| format!("{to}{p}")))?;
        return Some(format!("vit.encoder.layer.{layer}.{renamed}"));
    }
    OTHER_NAMES
        .iter()
        .find_map(|(from, to)| name.strip_prefix(from).map(|p| format!("{to}{p}")))
}

/// HF `llama4_vision_model` and the vision encoder of `llama4`.
pub struct HfLlama4;

impl CheckpointLayout for HfLlama4 {
    fn name(&self) -> &'static str {
        "HF llama4"
    }

    fn reads_config(&self, json: &Value) -> bool {
        model_type_is(json, &["llama4", "llama4_vision_model"])
    }

    fn config(&self, json: &Value, _: &dyn TensorShapes, _: Option<usize>) -> Result<ViTConfig> {
        config(json)
    }

    fn default_preprocess(
        &self,
        _: Option<&Value>,
        config: &ViTConfig,
    ) -> Result<PreprocessConfig> {
        Ok(PreprocessConfig::llama4(config.image_size))
    }

    fn canonical_name(&self, stored: &str) -> Option<String> {
        canonical_name(stored)
    }

    fn unit_dims(&self, canonical: &str) -> usize {
        match canonical {
            "vit.embeddings.cls_token" => 2,
            "vit.embeddings.position_embeddings" => 1,
            _ => 0,
        }
    }

    fn merged_dims(&self, canonical: &str) -> bool {
        canonical == "vit.embeddings.patch_embeddings.projection.weight"
    }

    /// The language model and the projector of a whole checkpoint.
    fn unused_by_design(&self, canonical: &str, _: &ViTConfig) -> bool {
        OTHER_TOWERS
            .iter()
            .any(|prefix| canonical.starts_with(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama4_names_become_canonical() {
        let names = [
            ("class_embedding", "vit.embeddings.cls_token"),
            (
                "vision_model.patch_embedding.linear.weight",
                "vit.embeddings.patch_embeddings.projection.weight",
            ),
            (
                "model.layers.2.self_attn.k_proj.bias",
                "vit.encoder.layer.2.attention.attention.key.bias",
            ),
            (
                "vision_model.model.layers.0.post_attention_layernorm.weight",
                "vit.encoder.layer.0.layernorm_after.weight",
            ),
            ("layernorm_post.bias", "vit.layernorm.bias"),
            ("vision_adapter.mlp.fc2.weight", "adapter.fc2.weight"),
        ];
        for (stored, canonical) in names {
            assert_eq!(
                canonical_name(stored).as_deref(),
                Some(canonical),
                "{stored}"
            );
        }
        assert_eq!(canonical_name("language_model.model.norm.weight"), None);
        assert_eq!(
            canonical_name("model.layers.0.self_attn.rotary.freqs"),
            None
        );
    }

    #[test]
    fn llama4_configs_take_hf_defaults_and_refuse_wrong_types() {
        let json = serde_json::json!({"model_type": "llama4_vision_model",
            "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 256,
            "image_size": 56, "projector_input_dim": 32, "projector_output_dim": 32});
        let parsed = config(&json).unwrap();
        assert_eq!((parsed.num_hidden_layers, parsed.patch_size), (34, 14));
        assert_eq!(parsed.variant.rotary.map(|r| r.theta), Some(10_000.0));
        assert_eq!(parsed.layer_norm_eps, 1e-5);
        let whole = serde_json::json!({"model_type": "llama4", "vision_config": json});
        assert_eq!(config(&whole).unwrap(), parsed);
        for (key, value, message) in [
            (
                "pixel_shuffle_ratio",
                serde_json::json!(0.3),
                "pixel_shuffle_ratio",
            ),
            (
                "pixel_shuffle_ratio",
                serde_json::json!("half"),
                "pixel_shuffle_ratio",
            ),
            (
                "projector_output_dim",
                serde_json::json!(16),
                "projector_input_dim",
            ),
            (
                "projector_input_dim",
                serde_json::json!(-1),
                "projector_input_dim",
            ),
            ("image_size", serde_json::json!(42), "pixel_shuffle_ratio"),
        ] {
            let mut bad = json.clone();
            bad[key] = value;
            let err = format!("{:#}", config(&bad).unwrap_err());
            assert!(err.contains(message), "{key}: {err}");
        }
        let no_vision = serde_json::json!({"model_type": "llama4"});
        assert!(format!("{:#}", config(&no_vision).unwrap_err()).contains("vision_config"));
    }
}
