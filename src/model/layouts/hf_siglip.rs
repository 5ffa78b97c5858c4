//! HF `siglip` (`SiglipModel`: image and text towers, `logit_scale` and `logit_bias`;
//! `SiglipForImageClassification`) and `siglip_vision_model` (`SiglipVisionModel`). The image
//! tower is the family's encoder without a class token, with positions for the patches only,
//! a layer norm on all tokens after the blocks (`post_layernorm`) and multihead attention
//! pooling (`head`); the text tower runs without a causal mask and pools its last position
//! through a projection with a bias (`head`).

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::hf_clip::{
    activation_and_eps, fill_vision_defaults, int, layer_name, sub_config, text_name,
};
use super::{architecture, model_type_is, CheckpointLayout};
use crate::model::config::{generic_labels, Head, Pooling, PosInterpolation, ViTConfig};
use crate::model::text::{ContrastiveLoss, TextConfig, TextPooling};
use crate::model::weights::TensorShapes;

const CLASSIFIER: &str = "SiglipForImageClassification";

/// The image tower of an HF SigLIP `config.json`, with `SiglipVisionConfig`'s defaults.
pub fn config(json: &Value) -> Result<ViTConfig> {
    let Value::Object(top) = json else {
        bail!("config.json is not a JSON object");
    };
    let classifier = architecture(json) == Some(CLASSIFIER);
    let mut map = match top.get("model_type").and_then(Value::as_str) {
        Some("siglip") => sub_config(top, "vision_config")?,
        _ => top.clone(),
    };
    fill_vision_defaults(&mut map, 16, "gelu_pytorch_tanh", 1e-6);
    let use_head = map
        .get("vision_use_head")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    // Labels belong to the classifier's top-level config; SigLIP's projections always have a
    // bias.
    for key in ["id2label", "label2id", "num_labels", "qkv_bias"] {
        map.remove(key);
        if classifier {
            if let Some(value) = top.get(key) {
                map.insert(key.to_string(), value.clone());
            }
        }
    }
    let mut config = ViTConfig::from_value(&Value::Object(map))?;
    let variant = &mut config.variant;
    variant.class_token = false;
    variant.class_positions = false;
    variant.pos_interpolation = PosInterpolation::Bicubic;
    // SiglipForImageClassification averages the tokens; so does `embed` for a tower without
    // its pooling head, where HF has no pooled output.
    variant.pooling = match use_head && !classifier {
        true => Pooling::AttentionPool,
        false => Pooling::Mean,
    };
    variant.head = match classifier {
        true => Head::Linear,
        false => Head::None,
    };
    match classifier {
        true if config.id2label.is_empty() => config.id2label = generic_labels(2),
        true => {}
        false => config.id2label = Vec::new(),
    }
    config.validate()?;
    Ok(config)
}

/// The text tower of an HF `SiglipModel` config, with `SiglipTextConfig`'s defaults; `None`
/// for the image-only models.
pub fn text_config(json: &Value) -> Result<Option<TextConfig>> {
    let Value::Object(top) = json else {
        bail!("config.json is not a JSON object");
    };
    let model_type = top.get("model_type").and_then(Value::as_str);
    if model_type != Some("siglip") || architecture(json) == Some(CLASSIFIER) {
        return Ok(None);
    }
    let text = sub_config(top, "text_config")?;
    let text_int = |key, default| int(&text, key, default).context("text_config");
    let (hidden_act, layer_norm_eps) = activation_and_eps(&text, "gelu_pytorch_tanh", 1e-6)?;
    let hidden_size = text_int("hidden_size", 768)?;
    let config = TextConfig {
        vocab_size: text_int("vocab_size", 32000)?,
        hidden_size,
        num_hidden_layers: text_int("num_hidden_layers", 12)?,
        num_attention_heads: text_int("num_attention_heads", 12)?,
        intermediate_size: text_int("intermediate_size", 3072)?,
        max_position_embeddings: text_int("max_position_embeddings", 64)?,
        hidden_act,
        layer_norm_eps,
        pooling: TextPooling::LastToken,
        projection_dim: text_int("projection_size", hidden_size)?,
        projection_bias: true,
        causal: false,
        padded: true,
        loss: ContrastiveLoss::Sigmoid,
    };
    config.validate()?;
    Ok(Some(config))
}

/// SigLIP's module names onto the canonical ones. `SiglipVisionModel` checkpoints name the
/// image tower's modules with or without the `vision_model.` prefix (transformers 5 saves them
/// without).
pub fn canonical_name(stored: &str) -> Option<String> {
    if matches!(stored, "logit_scale" | "logit_bias")
        || stored.strip_prefix("classifier.").is_some()
    {
        return Some(stored.to_string());
    }
    if let Some(rest) = stored.strip_prefix("text_model.") {
        return match rest.strip_prefix("head.") {
            Some(param) => Some(format!("text.projection.{param}")),
            None => text_name(rest),
        };
    }
    vision_name(stored.strip_prefix("vision_model.").unwrap_or(stored))
}

fn vision_name(rest: &str) -> Option<String> {
    let name = match rest {
        "embeddings.position_embedding.weight" => "vit.embeddings.position_embeddings".into(),
        "head.probe" => "vit.attention_pool.probe".into(),
        _ => {
            if let Some(param) = rest.strip_prefix("embeddings.patch_embedding.") {
                format!("vit.embeddings.patch_embeddings.projection.{param}")
            } else if let Some(param) = rest.strip_prefix("post_layernorm.") {
                format!("vit.layernorm.{param}")
            } else if let Some(head) = rest.strip_prefix("head.") {
                let (module, param) = head.rsplit_once('.')?;
                let module = match module {
                    "attention.out_proj" => "attention.output.dense",
                    "layernorm" => "layernorm",
                    "mlp.fc1" => "intermediate.dense",
                    "mlp.fc2" => "output.dense",
                    _ => return None,
                };
                format!("vit.attention_pool.{module}.{param}")
            } else {
                format!("vit.encoder.layer.{}", layer_name(rest)?)
            }
        }
    };
    Some(name)
}

/// The pooling head's `nn.MultiheadAttention` projection, query, key and value stacked
/// (`in_proj_weight`, `in_proj_bias`), as the canonical names it is split into.
pub fn fused_parts(stored: &str) -> Option<Vec<String>> {
    let rest = stored.strip_prefix("vision_model.").unwrap_or(stored);
    let param = match rest {
        "head.attention.in_proj_weight" => "weight",
        "head.attention.in_proj_bias" => "bias",
        _ => return None,
    };
    Some(
        ["query", "key", "value"]
            .iter()
            .map(|part| format!("vit.attention_pool.attention.attention.{part}.{param}"))
            .collect(),
    )
}

/// The attention pooling of a model that pools otherwise (SiglipForImageClassification,
/// whose checkpoints keep the vision tower's pooling head).
pub fn unused_by_design(canonical: &str, config: &ViTConfig) -> bool {
    config.variant.pooling != Pooling::AttentionPool && canonical.starts_with("vit.attention_pool.")
}

/// Leading unit dimensions the canonical tensor has over SigLIP's: the position embedding is
/// a `(patches, hidden)` table.
pub fn unit_dims(canonical: &str) -> usize {
    usize::from(canonical == "vit.embeddings.position_embeddings")
}

/// HF `siglip` and `siglip_vision_model`: `SiglipModel`, `SiglipVisionModel`,
/// `SiglipForImageClassification` (read only).
pub struct HfSiglip;

impl CheckpointLayout for HfSiglip {
    fn name(&self) -> &'static str {
        "HF siglip"
    }

    fn reads_config(&self, json: &Value) -> bool {
        model_type_is(json, &["siglip", "siglip_vision_model"])
    }

    fn config(&self, json: &Value, _: &dyn TensorShapes, _: Option<usize>) -> Result<ViTConfig> {
        config(json)
    }

    fn text_config(&self, json: &Value) -> Result<Option<TextConfig>> {
        text_config(json)
    }

    fn canonical_name(&self, stored: &str) -> Option<String> {
        canonical_name(stored)
    }

    fn fused_parts(&self, stored: &str) -> Option<Vec<String>> {
        fused_parts(stored)
    }

    fn unit_dims(&self, canonical: &str) -> usize {
        unit_dims(canonical)
    }

    fn unused_by_design(&self, canonical: &str, config: &ViTConfig) -> bool {
        unused_by_design(canonical, config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Activation;

    #[test]
    fn siglip_names_become_canonical() {
        let names = [
            (
                "vision_model.embeddings.patch_embedding.bias",
                "vit.embeddings.patch_embeddings.projection.bias",
            ),
            (
                "embeddings.position_embedding.weight",
                "vit.embeddings.position_embeddings",
            ),
            ("vision_model.post_layernorm.weight", "vit.layernorm.weight"),
            ("head.probe", "vit.attention_pool.probe"),
            (
                "vision_model.head.attention.out_proj.bias",
                "vit.attention_pool.attention.output.dense.bias",
            ),
            (
                "vision_model.head.mlp.fc2.weight",
                "vit.attention_pool.output.dense.weight",
            ),
            (
                "vision_model.encoder.layers.1.self_attn.k_proj.weight",
                "vit.encoder.layer.1.attention.attention.key.weight",
            ),
            ("text_model.head.bias", "text.projection.bias"),
            (
                "text_model.encoder.layers.0.layer_norm2.weight",
                "text.encoder.layer.0.layernorm_after.weight",
            ),
            ("logit_bias", "logit_bias"),
        ];
        for (stored, canonical) in names {
            assert_eq!(
                canonical_name(stored).as_deref(),
                Some(canonical),
                "{stored}"
            );
        }
        assert_eq!(canonical_name("vision_model.head.odd.weight"), None);
        assert_eq!(
            fused_parts("head.attention.in_proj_bias").unwrap()[2],
            "vit.attention_pool.attention.attention.value.bias"
        );
    }

    #[test]
    fn siglip_configs_fill_siglips_defaults() {
        let json = serde_json::json!({"model_type": "siglip",
            "text_config": {"hidden_size": 24, "num_attention_heads": 2},
            "vision_config": {"hidden_size": 32, "num_attention_heads": 2}});
        let vision = config(&json).unwrap();
        assert_eq!(vision.hidden_act, Activation::GeluTanh);
        assert_eq!(vision.layer_norm_eps, 1e-6);
        assert_eq!(vision.variant.pooling, Pooling::AttentionPool);
        assert!(!vision.variant.class_token && !vision.has_head());
        let text = text_config(&json).unwrap().unwrap();
        assert_eq!(text.pooling, TextPooling::LastToken);
        assert_eq!(
            (text.projection_dim, text.max_position_embeddings),
            (24, 64)
        );
        assert!(!text.causal && text.padded && text.projection_bias);
        let classifier = serde_json::json!({"model_type": "siglip",
            "architectures": ["SiglipForImageClassification"],
            "vision_config": {"hidden_size": 32, "num_attention_heads": 2}});
        let vision = config(&classifier).unwrap();
        assert_eq!(vision.variant.pooling, Pooling::Mean);
        assert_eq!(vision.id2label, ["LABEL_0", "LABEL_1"]);
        assert!(text_config(&classifier).unwrap().is_none());
        let headless = serde_json::json!({"model_type": "siglip_vision_model",
            "vision_use_head": false});
        assert_eq!(config(&headless).unwrap().variant.pooling, Pooling::Mean);
    }
}
