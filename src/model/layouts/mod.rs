//! Checkpoint layouts: how each library names a ViT-family model's tensors and describes it in
//! `config.json`, mapped onto the one encoder of [`super::encoder`] (its canonical tensor
//! names, [`super::weights::expected_tensors`], and a [`ViTConfig`] with its [`Variant`]).
//!
//! [`Variant`]: super::config::Variant

pub mod hf_clip;
pub mod hf_deit;
pub mod hf_dinov2;
pub mod hf_dinov3;
pub mod hf_siglip;
pub mod hf_vit;
pub mod timm;

use anyhow::{bail, Result};
use serde_json::{Map, Value};

use super::config::{Head, MlpKind, Pooling, Variant, ViTConfig};
use super::text::TextConfig;
use super::weights::TensorShapes;

/// A checkpoint layout that `vit` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// HF `vit`: `ViTModel`, `ViTForImageClassification`.
    HfVit,
    /// HF `deit`: `DeiTModel`, `DeiTForImageClassification`,
    /// `DeiTForImageClassificationWithTeacher`.
    HfDeit,
    /// HF `dinov2` and `dinov2_with_registers`: `Dinov2Model`, `Dinov2ForImageClassification`.
    HfDinov2,
    /// HF `dinov3_vit`: `DINOv3ViTModel`, `DINOv3ViTBackbone`.
    HfDinov3,
    /// timm's `VisionTransformer` and `VisionTransformerDistilled`, as timm's hub repos hold
    /// them.
    Timm,
    /// HF `clip` and `clip_vision_model`: `CLIPModel`, `CLIPVisionModel`,
    /// `CLIPVisionModelWithProjection`.
    HfClip,
    /// HF `siglip` and `siglip_vision_model`: `SiglipModel`, `SiglipVisionModel`,
    /// `SiglipForImageClassification`.
    HfSiglip,
}

impl Layout {
    /// The layout a `config.json` describes, by its `model_type` (timm's configs have an
    /// `architecture` instead).
    pub fn of_config(json: &Value) -> Result<Self> {
        let model_type = json.get("model_type").and_then(Value::as_str);
        if model_type.is_none() && json.get("architecture").is_some() {
            return Ok(Self::Timm);
        }
        Ok(match model_type {
            None | Some("vit") => Self::HfVit,
            Some("deit") => Self::HfDeit,
            Some("dinov2" | "dinov2_with_registers") => Self::HfDinov2,
            Some("dinov3_vit") => Self::HfDinov3,
            Some("dinov3_convnext") => bail!(
                "model_type \"dinov3_convnext\" is a ConvNeXt, not a vision transformer: vit \
                 runs the DINOv3 ViTs (dinov3_vit)"
            ),
            Some("clip" | "clip_vision_model") => Self::HfClip,
            Some("siglip" | "siglip_vision_model") => Self::HfSiglip,
            Some(other) => bail!(
                "model_type {other:?} is not supported (supported: vit, deit, dinov2, \
                 dinov2_with_registers, dinov3_vit, clip, clip_vision_model, siglip, \
                 siglip_vision_model)"
            ),
        })
    }

    /// The layout of a checkpoint without `config.json`, by its tensor names.
    pub fn of_names(names: &[String]) -> Self {
        match timm::has_timm_names(names) {
            true => Self::Timm,
            false => Self::HfVit,
        }
    }

    /// The architecture `config.json` describes, in this layout; timm's is read off the
    /// tensors (`shapes`, by canonical name), with `num_heads` for a config without them.
    pub fn config(
        self,
        json: &Value,
        shapes: &(impl TensorShapes + ?Sized),
        num_heads: Option<usize>,
    ) -> Result<ViTConfig> {
        match self {
            Self::HfVit => hf_vit::config(json),
            Self::HfDeit => hf_deit::config(json),
            Self::HfDinov2 => hf_dinov2::config(json),
            Self::HfDinov3 => hf_dinov3::config(json),
            Self::Timm => timm::config(json, shapes, num_heads),
            Self::HfClip => hf_clip::config(json),
            Self::HfSiglip => hf_siglip::config(json),
        }
    }

    /// The text tower `config.json` describes, for image-text models.
    pub fn text_config(self, json: &Value) -> Result<Option<TextConfig>> {
        match self {
            Self::HfClip => hf_clip::text_config(json),
            Self::HfSiglip => hf_siglip::text_config(json),
            _ => Ok(None),
        }
    }

    /// Leading unit dimensions the canonical tensor `canonical` has over this layout's.
    pub fn unit_dims(self, canonical: &str) -> usize {
        match self {
            Self::HfClip => hf_clip::unit_dims(canonical),
            Self::HfSiglip => hf_siglip::unit_dims(canonical),
            _ => 0,
        }
    }

    /// Whether the checkpoint's library also keeps `canonical` without using it for what
    /// `config` computes (SiglipForImageClassification's logits read the token mean, not its
    /// attention pooling), so that it is not reported as unused.
    pub fn unused_by_design(self, canonical: &str, config: &ViTConfig) -> bool {
        match self {
            Self::HfSiglip => hf_siglip::unused_by_design(canonical, config),
            Self::HfDinov3 => hf_dinov3::unused_by_design(canonical, config),
            _ => false,
        }
    }

    /// The canonical names a fused stored tensor is split into along its rows (timm's
    /// `qkv`, SigLIP's pooling `in_proj`), if it is one.
    pub fn fused_parts(self, stored: &str) -> Option<Vec<String>> {
        match self {
            Self::Timm => timm::fused_parts(stored),
            Self::HfSiglip => hf_siglip::fused_parts(stored),
            _ => None,
        }
    }

    /// The canonical name of a stored tensor (after DataParallel's `module.` is stripped);
    /// names the layout does not know are kept as they are (and reported as unused).
    pub fn canonical_name(self, stored: &str) -> String {
        let renamed = match self {
            Self::HfVit => hf_vit::canonical_name(stored),
            Self::HfDeit => hf_deit::canonical_name(stored),
            Self::HfDinov2 => hf_dinov2::canonical_name(stored),
            Self::HfDinov3 => hf_dinov3::canonical_name(stored),
            Self::Timm => timm::canonical_name(stored),
            Self::HfClip => hf_clip::canonical_name(stored),
            Self::HfSiglip => hf_siglip::canonical_name(stored),
        };
        renamed.unwrap_or_else(|| stored.to_string())
    }

    /// The HF layout that holds `variant`: DeiT for a distillation token, DINOv2 for layer
    /// scale, else ViT; an error for variants no HF layout of the family has.
    pub fn of_variant(variant: &Variant) -> Result<Self> {
        let layout = if variant.rotary.is_some() {
            Self::HfDinov3
        } else if variant.distillation_token {
            Self::HfDeit
        } else if variant.layer_scale || variant.register_tokens > 0 {
            Self::HfDinov2
        } else {
            Self::HfVit
        };
        let expected = layout.variant(variant);
        if *variant != expected {
            bail!(
                "this variant has no HF counterpart in the ViT family (ViT, DeiT, DINOv2): {}",
                describe_difference(variant, &expected)
            );
        }
        Ok(layout)
    }

    /// The variant of this layout with `variant`'s free choices (head, pooling, registers,
    /// MLP) kept, to compare against.
    fn variant(self, variant: &Variant) -> Variant {
        let plain = Variant::default();
        match self {
            Self::HfVit | Self::Timm | Self::HfClip | Self::HfSiglip => Variant {
                head: variant.head,
                ..plain
            },
            Self::HfDeit => Variant {
                head: variant.head,
                pooling: match variant.head {
                    Head::Distilled => Pooling::ClassDistillationAverage,
                    _ => Pooling::Class,
                },
                distillation_token: true,
                ..plain
            },
            Self::HfDinov2 => Variant {
                head: variant.head,
                pooling: variant.pooling,
                register_tokens: variant.register_tokens,
                mlp: match variant.mlp {
                    MlpKind::Gated => MlpKind::SwiGlu,
                    other => other,
                },
                pos_interpolation: variant.pos_interpolation,
                layer_scale: true,
                ..plain
            },
            Self::HfDinov3 => Variant {
                absolute_positions: false,
                rotary: variant.rotary,
                register_tokens: variant.register_tokens,
                mlp: match variant.mlp {
                    MlpKind::SwiGlu => MlpKind::Standard,
                    other => other,
                },
                layer_scale: true,
                head: Head::None,
                ..plain
            },
        }
    }

    /// The `config.json` of `config` in this layout, on top of `base`'s other keys.
    pub fn hf_config(self, config: &ViTConfig, base: Option<&Value>) -> Value {
        let mut map = match base {
            Some(Value::Object(map)) => map.clone(),
            _ => Map::new(),
        };
        for key in ["num_labels", "id2label", "label2id"] {
            map.remove(key);
        }
        // timm checkpoints are written in the HF layout of their variant (`of_variant`), which
        // is never CLIP's or SigLIP's.
        let (model_type, architecture, specific) = match self {
            Self::HfVit | Self::Timm | Self::HfClip | Self::HfSiglip => hf_vit::hf_config(config),
            Self::HfDeit => hf_deit::hf_config(config),
            Self::HfDinov2 => hf_dinov2::hf_config(config, base),
            Self::HfDinov3 => hf_dinov3::hf_config(config),
        };
        map.insert("architectures".into(), serde_json::json!([architecture]));
        map.insert("model_type".into(), Value::from(model_type));
        for (key, value) in config.common_hf_entries().into_iter().chain(specific) {
            map.insert(key.to_string(), value);
        }
        Value::Object(map)
    }

    /// The name this layout stores a canonical tensor under (what `save_pretrained` writes).
    pub fn stored_name(self, canonical: &str, config: &ViTConfig) -> String {
        match self {
            Self::HfVit | Self::Timm | Self::HfClip | Self::HfSiglip => {
                hf_vit::stored_name(canonical, config)
            }
            Self::HfDeit => hf_deit::stored_name(canonical, config),
            Self::HfDinov2 => hf_dinov2::stored_name(canonical, config),
            Self::HfDinov3 => hf_dinov3::stored_name(canonical),
        }
    }

    /// The architecture name of the head of `config`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::HfVit => "HF vit",
            Self::HfDeit => "HF deit",
            Self::HfDinov2 => "HF dinov2",
            Self::HfDinov3 => "HF dinov3_vit",
            Self::Timm => "timm",
            Self::HfClip => "HF clip",
            Self::HfSiglip => "HF siglip",
        }
    }
}

/// Which options of `variant` differ from `expected`, for messages.
fn describe_difference(variant: &Variant, expected: &Variant) -> String {
    let mut differences = Vec::new();
    if variant.rotary.is_some() {
        differences.push("rotary position embeddings".to_string());
    }
    if variant.absolute_positions != expected.absolute_positions {
        differences.push("no absolute position embeddings".to_string());
    }
    if variant.mlp == MlpKind::Gated {
        differences.push("a gated MLP".to_string());
    }
    if variant.class_token != expected.class_token {
        differences.push("no class token".to_string());
    }
    if variant.class_positions != expected.class_positions {
        differences.push("no_embed_class".to_string());
    }
    if variant.register_positions != expected.register_positions {
        differences.push("position embeddings on register tokens".to_string());
    }
    if variant.norm_pre != expected.norm_pre {
        differences.push("norm_pre".to_string());
    }
    if variant.final_norm != expected.final_norm || variant.pool_norm != expected.pool_norm {
        differences.push("fc_norm".to_string());
    }
    if variant.pooling != expected.pooling {
        differences.push(format!("{:?} pooling", variant.pooling).to_lowercase());
    }
    if variant.patch_bias != expected.patch_bias {
        differences.push("no patch bias".to_string());
    }
    if variant.projection.is_some() {
        differences.push("an embedding projection".to_string());
    }
    if variant.mlp != expected.mlp && variant.mlp == MlpKind::SwiGlu {
        differences.push("SwiGLU without layer scale".to_string());
    }
    if differences.is_empty() {
        differences.push(format!("{variant:?}"));
    }
    differences.join(", ")
}

/// The first entry of `architectures`, if any.
pub(crate) fn architecture(json: &Value) -> Option<&str> {
    json.get("architectures")?.as_array()?.first()?.as_str()
}

/// Renames a layer's tensor named as in transformers 5's modules (which `state_dict()`
/// returns there: `attention.q_proj`, `.o_proj`, `mlp.fc1`, `mlp.fc2`) to its checkpoint
/// name (`rest` is what follows `layer.N.`); `None` for any other name.
pub(crate) fn transformers5_layer_name(rest: &str) -> Option<String> {
    let (module, param) = rest.rsplit_once('.')?;
    let module = match module {
        "attention.q_proj" => "attention.attention.query",
        "attention.k_proj" => "attention.attention.key",
        "attention.v_proj" => "attention.attention.value",
        "attention.o_proj" => "attention.output.dense",
        "mlp.fc1" => "intermediate.dense",
        "mlp.fc2" => "output.dense",
        _ => return None,
    };
    Some(format!("{module}.{param}"))
}
