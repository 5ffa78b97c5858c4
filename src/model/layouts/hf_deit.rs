//! HF `deit`: a ViT with a distillation token after the class token, both with position
//! embeddings. `DeiTForImageClassification` has a head on the class token,
//! `DeiTForImageClassificationWithTeacher` the mean of that and a head on the distillation
//! token, `DeiTModel` none.

use anyhow::Result;
use serde_json::Value;

use super::{architecture, hf_vit, model_type_is, CheckpointLayout, HfConfigKeys};
use crate::model::config::{generic_labels, Head, Pooling, Variant, ViTConfig};
use crate::model::weights::TensorShapes;

/// The architecture of an HF DeiT `config.json` (DeiT's keys and defaults are ViT's).
pub fn config(json: &Value) -> Result<ViTConfig> {
    let mut config = ViTConfig::from_value(json)?;
    config.variant.distillation_token = true;
    config.variant.head = match architecture(json) {
        Some("DeiTModel") => Head::None,
        Some("DeiTForImageClassificationWithTeacher") => Head::Distilled,
        _ => Head::Linear,
    };
    if config.variant.head == Head::Distilled {
        // What the two heads read, averaged, as timm's distilled DeiT pools.
        config.variant.pooling = Pooling::ClassDistillationAverage;
    }
    match config.variant.head {
        Head::None => config.id2label = Vec::new(),
        _ if config.id2label.is_empty() => config.id2label = generic_labels(2),
        _ => {}
    }
    config.validate()?;
    Ok(config)
}

/// `model_type`, `architectures` and the layout's own keys for `config`.
pub fn hf_config(config: &ViTConfig) -> (&'static str, &'static str, Vec<(&'static str, Value)>) {
    let architecture = match config.variant.head {
        Head::None => "DeiTModel",
        Head::Linear => "DeiTForImageClassification",
        Head::Distilled => "DeiTForImageClassificationWithTeacher",
    };
    let keys = vec![("intermediate_size", Value::from(config.intermediate_size))];
    ("deit", architecture, keys)
}

/// The stored name of a canonical one: `vit.` becomes `deit.` (bare in `DeiTModel`), the
/// teacher model's class head is `cls_classifier`.
pub fn stored_name(canonical: &str, config: &ViTConfig) -> String {
    let head = config.variant.head;
    if let Some(rest) = canonical.strip_prefix("vit.") {
        return match head {
            Head::None => rest.to_string(),
            _ => format!("deit.{rest}"),
        };
    }
    match (head, canonical.strip_prefix("classifier.")) {
        (Head::Distilled, Some(rest)) => format!("cls_classifier.{rest}"),
        _ => canonical.to_string(),
    }
}

/// `deit.X` is the canonical `vit.X` (bare `DeiTModel` names as HF ViT's), the teacher
/// model's `cls_classifier` the canonical `classifier`.
pub fn canonical_name(stored: &str) -> Option<String> {
    if let Some(rest) = stored.strip_prefix("deit.") {
        return Some(hf_vit::canonical_name(rest).unwrap_or_else(|| format!("vit.{rest}")));
    }
    if let Some(rest) = stored.strip_prefix("cls_classifier.") {
        return Some(format!("classifier.{rest}"));
    }
    hf_vit::canonical_name(stored)
}

/// HF `deit`: `DeiTModel`, `DeiTForImageClassification`,
/// `DeiTForImageClassificationWithTeacher`.
pub struct HfDeit;

impl CheckpointLayout for HfDeit {
    fn name(&self) -> &'static str {
        "HF deit"
    }

    fn reads_config(&self, json: &Value) -> bool {
        model_type_is(json, &["deit"])
    }

    fn config(&self, json: &Value, _: &dyn TensorShapes, _: Option<usize>) -> Result<ViTConfig> {
        config(json)
    }

    fn canonical_name(&self, stored: &str) -> Option<String> {
        canonical_name(stored)
    }

    /// Variants with a distillation token, pooled as their head says.
    fn writes(&self, variant: &Variant) -> Option<Variant> {
        (variant.rotary.is_none() && variant.distillation_token).then_some(Variant {
            head: variant.head,
            pooling: match variant.head {
                Head::Distilled => Pooling::ClassDistillationAverage,
                _ => Pooling::Class,
            },
            distillation_token: true,
            ..Variant::default()
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
    fn deit_names_and_heads() {
        assert_eq!(
            canonical_name("deit.embeddings.distillation_token").as_deref(),
            Some("vit.embeddings.distillation_token")
        );
        assert_eq!(
            canonical_name("deit.encoder.layer.0.attention.attention.query.weight").as_deref(),
            Some("vit.encoder.layer.0.attention.attention.query.weight")
        );
        assert_eq!(
            canonical_name("cls_classifier.weight").as_deref(),
            Some("classifier.weight")
        );
        assert_eq!(canonical_name("distillation_classifier.bias"), None);
        let teacher = serde_json::json!({"model_type": "deit", "num_labels": 3,
            "architectures": ["DeiTForImageClassificationWithTeacher"]});
        let parsed = super::config(&teacher).unwrap();
        assert_eq!(parsed.variant.head, Head::Distilled);
        assert_eq!(parsed.variant.prefix_tokens(), 2);
        assert_eq!(parsed.num_positions(), 14 * 14 + 2);
    }
}
