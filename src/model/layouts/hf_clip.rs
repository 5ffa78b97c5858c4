//! HF `clip` (`CLIPModel`: image and text towers, their projections, `logit_scale`) and
//! `clip_vision_model` (`CLIPVisionModel`, `CLIPVisionModelWithProjection`). The image tower
//! is the family's encoder with no patch bias, a layer norm before the blocks
//! (`pre_layrnorm`), none after them, and one on the pooled class token (`post_layernorm`),
//! then `visual_projection`.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use super::{architecture, model_type_is, CheckpointLayout};
use crate::model::config::{Activation, Head, Pooling, PosInterpolation, ViTConfig};
use crate::model::text::{ContrastiveLoss, TextConfig, TextPooling};
use crate::model::weights::TensorShapes;

/// The image tower of an HF CLIP `config.json`, with `CLIPVisionConfig`'s defaults.
pub fn config(json: &Value) -> Result<ViTConfig> {
    let Value::Object(top) = json else {
        bail!("config.json is not a JSON object");
    };
    let full_model = top.get("model_type").and_then(Value::as_str) == Some("clip");
    let (vision, projection) = match full_model {
        true => (
            sub_config(top, "vision_config")?,
            Some(int(top, "projection_dim", 512)?),
        ),
        false => {
            let projected = architecture(json) == Some("CLIPVisionModelWithProjection");
            (
                top.clone(),
                projected
                    .then(|| int(top, "projection_dim", 512))
                    .transpose()?,
            )
        }
    };
    let mut map = vision;
    fill_vision_defaults(&mut map, 32, "quick_gelu", 1e-5);
    // Labels and qkv_bias are not CLIP keys: its projections always have a bias.
    for key in ["id2label", "label2id", "num_labels", "qkv_bias"] {
        map.remove(key);
    }
    let mut config = ViTConfig::from_value(&Value::Object(map))?;
    config.id2label = Vec::new();
    let variant = &mut config.variant;
    variant.patch_bias = false;
    variant.norm_pre = true;
    variant.final_norm = false;
    variant.pool_norm = true;
    variant.pooling = Pooling::Class;
    variant.pos_interpolation = PosInterpolation::Bicubic;
    variant.head = Head::None;
    variant.projection = projection;
    config.validate()?;
    Ok(config)
}

/// The text tower of an HF `CLIPModel` config, with `CLIPTextConfig`'s defaults; `None` for
/// the image-only models.
pub fn text_config(json: &Value) -> Result<Option<TextConfig>> {
    let Value::Object(top) = json else {
        bail!("config.json is not a JSON object");
    };
    if top.get("model_type").and_then(Value::as_str) != Some("clip") {
        return Ok(None);
    }
    let text = sub_config(top, "text_config")?;
    let text_int = |key, default| int(&text, key, default).context("text_config");
    let eos = text_int("eos_token_id", 49407)?;
    let (hidden_act, layer_norm_eps) = activation_and_eps(&text, "quick_gelu", 1e-5)?;
    let config = TextConfig {
        vocab_size: text_int("vocab_size", 49408)?,
        hidden_size: text_int("hidden_size", 512)?,
        num_hidden_layers: text_int("num_hidden_layers", 12)?,
        num_attention_heads: text_int("num_attention_heads", 8)?,
        intermediate_size: text_int("intermediate_size", 2048)?,
        max_position_embeddings: text_int("max_position_embeddings", 77)?,
        hidden_act,
        layer_norm_eps,
        // transformers keeps the highest-id pooling of configs from before its fix of the
        // eos_token_id (2), and pools the first end-of-text token otherwise.
        pooling: match eos {
            2 => TextPooling::HighestId,
            id => TextPooling::FirstToken(id as u32),
        },
        projection_dim: int(top, "projection_dim", 512)?,
        projection_bias: false,
        causal: true,
        padded: false,
        loss: ContrastiveLoss::Softmax,
    };
    config.validate()?;
    Ok(Some(config))
}

/// The image-tower defaults CLIP's and SigLIP's vision configs share (ViT-B, 224 px), with
/// their own patch size, activation and layer-norm eps, for the keys `map` lacks.
pub(super) fn fill_vision_defaults(
    map: &mut Map<String, Value>,
    patch_size: usize,
    hidden_act: &str,
    layer_norm_eps: f64,
) {
    let defaults = [
        ("hidden_size", Value::from(768)),
        ("intermediate_size", Value::from(3072)),
        ("num_hidden_layers", Value::from(12)),
        ("num_attention_heads", Value::from(12)),
        ("image_size", Value::from(224)),
        ("patch_size", Value::from(patch_size)),
        ("hidden_act", Value::from(hidden_act)),
        ("layer_norm_eps", Value::from(layer_norm_eps)),
    ];
    for (key, value) in defaults {
        map.entry(key).or_insert(value);
    }
}

/// A text config's `hidden_act` and `layer_norm_eps`, with these defaults for missing
/// keys; a present one of the wrong kind, or an eps outside (0, 1), is an error naming it,
/// as in the vision config.
pub(super) fn activation_and_eps(
    text: &Map<String, Value>,
    hidden_act: &str,
    layer_norm_eps: f64,
) -> Result<(Activation, f64)> {
    let act = match text.get("hidden_act") {
        None => hidden_act,
        Some(value) => value
            .as_str()
            .with_context(|| format!("text_config.hidden_act {value} is not a name"))?,
    };
    let eps = match text.get("layer_norm_eps") {
        None => layer_norm_eps,
        Some(value) => value
            .as_f64()
            .with_context(|| format!("text_config.layer_norm_eps {value} is not a number"))?,
    };
    crate::model::config::check_eps(eps).context("text_config")?;
    Ok((Activation::from_hf_name(act)?, eps))
}

/// A sub-config (`vision_config`, `text_config`) with the older `*_config_dict` keys
/// merged over it, as `CLIPConfig` does.
pub(super) fn sub_config(top: &Map<String, Value>, key: &str) -> Result<Map<String, Value>> {
    let mut map = match top.get(key) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => bail!("{key} is not a JSON object"),
    };
    if let Some(Value::Object(legacy)) = top.get(&format!("{key}_dict")) {
        for (k, v) in legacy {
            map.insert(k.clone(), v.clone());
        }
    }
    Ok(map)
}

pub(super) fn int(map: &Map<String, Value>, key: &str, default: usize) -> Result<usize> {
    match map.get(key) {
        None => Ok(default),
        Some(value) => value
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .with_context(|| format!("{key} {value} is not a whole number")),
    }
}

/// CLIP's module names onto the canonical ones.
pub fn canonical_name(stored: &str) -> Option<String> {
    match stored {
        "visual_projection.weight" => return Some("projection.weight".into()),
        "text_projection.weight" => return Some("text.projection.weight".into()),
        "logit_scale" => return Some("logit_scale".into()),
        _ => {}
    }
    if let Some(rest) = stored.strip_prefix("vision_model.") {
        let name = match rest {
            "embeddings.class_embedding" => "vit.embeddings.cls_token".to_string(),
            "embeddings.patch_embedding.weight" => {
                "vit.embeddings.patch_embeddings.projection.weight".to_string()
            }
            "embeddings.position_embedding.weight" => {
                "vit.embeddings.position_embeddings".to_string()
            }
            _ => {
                if let Some(param) = rest.strip_prefix("pre_layrnorm.") {
                    format!("vit.pre_layernorm.{param}")
                } else if let Some(param) = rest.strip_prefix("post_layernorm.") {
                    format!("vit.pool_layernorm.{param}")
                } else {
                    format!("vit.encoder.layer.{}", layer_name(rest)?)
                }
            }
        };
        return Some(name);
    }
    text_name(stored.strip_prefix("text_model.")?)
}

/// A text tower's module name (what follows `text_model.`) as the canonical one: embeddings,
/// layers and final layer norm, which CLIP and SigLIP name alike.
pub(super) fn text_name(rest: &str) -> Option<String> {
    let name = match rest {
        "embeddings.token_embedding.weight" | "embeddings.position_embedding.weight" => {
            format!("text.{rest}")
        }
        _ => match rest.strip_prefix("final_layer_norm.") {
            Some(param) => format!("text.final_layer_norm.{param}"),
            None => format!("text.encoder.layer.{}", layer_name(rest)?),
        },
    };
    Some(name)
}

/// `encoder.layers.N.<module>.<param>` as the canonical `N.<module>.<param>`.
pub(super) fn layer_name(rest: &str) -> Option<String> {
    let rest = rest.strip_prefix("encoder.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, param) = rest.rsplit_once('.')?;
    let module = match module {
        "layer_norm1" => "layernorm_before",
        "layer_norm2" => "layernorm_after",
        "self_attn.q_proj" => "attention.attention.query",
        "self_attn.k_proj" => "attention.attention.key",
        "self_attn.v_proj" => "attention.attention.value",
        "self_attn.out_proj" => "attention.output.dense",
        "mlp.fc1" => "intermediate.dense",
        "mlp.fc2" => "output.dense",
        _ => return None,
    };
    Some(format!("{layer}.{module}.{param}"))
}

/// Leading unit dimensions the canonical tensor has over CLIP's: the class embedding is a
/// vector, the position embedding a `(positions, hidden)` table.
pub fn unit_dims(canonical: &str) -> usize {
    match canonical {
        "vit.embeddings.cls_token" => 2,
        "vit.embeddings.position_embeddings" => 1,
        _ => 0,
    }
}

/// HF `clip` and `clip_vision_model`: `CLIPModel`, `CLIPVisionModel`,
/// `CLIPVisionModelWithProjection` (read only).
pub struct HfClip;

impl CheckpointLayout for HfClip {
    fn name(&self) -> &'static str {
        "HF clip"
    }

    fn reads_config(&self, json: &Value) -> bool {
        model_type_is(json, &["clip", "clip_vision_model"])
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

    fn unit_dims(&self, canonical: &str) -> usize {
        unit_dims(canonical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_names_become_canonical() {
        let names = [
            (
                "vision_model.embeddings.class_embedding",
                "vit.embeddings.cls_token",
            ),
            (
                "vision_model.pre_layrnorm.weight",
                "vit.pre_layernorm.weight",
            ),
            (
                "vision_model.post_layernorm.bias",
                "vit.pool_layernorm.bias",
            ),
            (
                "vision_model.encoder.layers.3.self_attn.out_proj.weight",
                "vit.encoder.layer.3.attention.output.dense.weight",
            ),
            (
                "text_model.encoder.layers.0.mlp.fc1.bias",
                "text.encoder.layer.0.intermediate.dense.bias",
            ),
            (
                "text_model.final_layer_norm.weight",
                "text.final_layer_norm.weight",
            ),
            ("visual_projection.weight", "projection.weight"),
        ];
        for (stored, canonical) in names {
            assert_eq!(
                canonical_name(stored).as_deref(),
                Some(canonical),
                "{stored}"
            );
        }
        assert_eq!(
            canonical_name("text_model.encoder.layers.0.odd.weight"),
            None
        );
    }

    #[test]
    fn clip_configs_fill_clips_defaults() {
        let json = serde_json::json!({"model_type": "clip", "projection_dim": 16,
            "text_config": {"hidden_size": 24, "num_attention_heads": 2, "eos_token_id": 2},
            "vision_config": {"hidden_size": 32, "num_attention_heads": 2, "patch_size": 16}});
        let vision = config(&json).unwrap();
        assert_eq!(vision.hidden_act, Activation::QuickGelu);
        assert_eq!(vision.layer_norm_eps, 1e-5);
        assert_eq!(vision.variant.projection, Some(16));
        assert!(!vision.has_head());
        let text = text_config(&json).unwrap().unwrap();
        assert_eq!(text.pooling, TextPooling::HighestId);
        assert_eq!((text.vocab_size, text.max_position_embeddings), (49408, 77));
        let vision_only = serde_json::json!({"model_type": "clip_vision_model",
            "architectures": ["CLIPVisionModel"]});
        assert_eq!(config(&vision_only).unwrap().variant.projection, None);
        assert!(text_config(&vision_only).unwrap().is_none());
        let bad = serde_json::json!({"model_type": "clip",
            "text_config": {"hidden_size": 30, "num_attention_heads": 4}});
        let err = format!("{:#}", text_config(&bad).unwrap_err());
        assert!(err.contains("text_config: hidden_size 30"), "{err}");
    }
}
