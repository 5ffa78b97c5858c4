//! Checkpoint layouts: how each library names a ViT-family model's tensors and describes it in
//! `config.json`, mapped onto the one encoder of [`super::encoder`] (its canonical tensor
//! names, [`super::weights::expected_tensors`], and a [`ViTConfig`] with its [`Variant`]).
//!
//! [`Variant`]: super::config::Variant

pub mod hf_deit;
pub mod hf_dinov2;
pub mod hf_vit;

use anyhow::{bail, Result};
use serde_json::Value;

use super::config::ViTConfig;

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
}

impl Layout {
    /// The layout a `config.json` describes, by its `model_type`.
    pub fn of_config(json: &Value) -> Result<Self> {
        let model_type = json.get("model_type").and_then(Value::as_str);
        Ok(match model_type {
            None | Some("vit") => Self::HfVit,
            Some("deit") => Self::HfDeit,
            Some("dinov2" | "dinov2_with_registers") => Self::HfDinov2,
            Some(other) => bail!(
                "model_type {other:?} is not supported (supported: vit, deit, dinov2, \
                 dinov2_with_registers)"
            ),
        })
    }

    /// The architecture `config.json` describes, in this layout.
    pub fn config(self, json: &Value) -> Result<ViTConfig> {
        match self {
            Self::HfVit => hf_vit::config(json),
            Self::HfDeit => hf_deit::config(json),
            Self::HfDinov2 => hf_dinov2::config(json),
        }
    }

    /// The canonical name of a stored tensor (after DataParallel's `module.` is stripped);
    /// names the layout does not know are kept as they are (and reported as unused).
    pub fn canonical_name(self, stored: &str) -> String {
        let renamed = match self {
            Self::HfVit => hf_vit::canonical_name(stored),
            Self::HfDeit => hf_deit::canonical_name(stored),
            Self::HfDinov2 => hf_dinov2::canonical_name(stored),
        };
        renamed.unwrap_or_else(|| stored.to_string())
    }

    /// The architecture name of the head of `config`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::HfVit => "HF vit",
            Self::HfDeit => "HF deit",
            Self::HfDinov2 => "HF dinov2",
        }
    }
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
