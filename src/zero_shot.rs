//! Zero-shot classification with an image-text model (CLIP, SigLIP): each label is put in a
//! template ("This is a photo of {}."), embedded by the text tower once, and an image's
//! logits are its cosine similarities with those embeddings, scaled by the model's logit
//! scale (plus SigLIP's logit bias), as HF's `zero-shot-image-classification` pipeline
//! computes `logits_per_image`; its scores are their softmax (CLIP) or sigmoid (SigLIP).

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, D};

use crate::classifier::ScoreFunction;
use crate::model::text::ContrastiveLoss;
use crate::model::TextTower;

/// HF's pipeline's `hypothesis_template`.
pub const DEFAULT_TEMPLATE: &str = "This is a photo of {}.";

/// Labels with their text embeddings.
pub struct ZeroShot {
    pub labels: Vec<String>,
    /// Unit-length text embeddings, `(labels, dim)`, f32.
    text_embeds: Tensor,
    logit_scale: f32,
    logit_bias: f32,
    loss: ContrastiveLoss,
}

impl ZeroShot {
    /// Embeds each of `labels` put into `template` (which holds one `{}`) with `text`.
    pub fn new(
        text: &TextTower,
        labels: Vec<String>,
        template: &str,
        device: &Device,
    ) -> Result<Self> {
        let sequences = label_texts(&labels, template)?;
        let text_embeds =
            normalize_rows(&text.embed(&sequences)?.to_dtype(DType::F32)?)?.to_device(device)?;
        Ok(Self {
            labels,
            text_embeds,
            logit_scale: text.logit_scale,
            logit_bias: text.logit_bias,
            loss: text.config.loss,
        })
    }

    /// `logits_per_image`, `(images, labels)`, of image embeddings `(images, dim)`.
    pub fn logits(&self, image_embeds: &Tensor) -> Result<Tensor> {
        let images = normalize_rows(&image_embeds.to_dtype(DType::F32)?)?;
        let cosine = images.matmul(&self.text_embeds.t()?)?;
        Ok(cosine.affine(f64::from(self.logit_scale), f64::from(self.logit_bias))?)
    }

    /// How the pipeline turns these logits into scores: a softmax over the labels (CLIP), a
    /// sigmoid per label (SigLIP).
    pub fn score_function(&self) -> ScoreFunction {
        score_function(self.loss)
    }
}

/// How zero-shot logits of a model trained with `loss` become scores, as HF's pipeline does:
/// a softmax over the labels (CLIP's contrastive loss), a sigmoid per label (SigLIP's).
pub fn score_function(loss: ContrastiveLoss) -> ScoreFunction {
    match loss {
        ContrastiveLoss::Softmax => ScoreFunction::Softmax,
        ContrastiveLoss::Sigmoid => ScoreFunction::Sigmoid,
    }
}

/// Each label put into `template` in place of its `{}`.
pub fn label_texts(labels: &[String], template: &str) -> Result<Vec<String>> {
    if labels.is_empty() {
        bail!("no labels to classify into");
    }
    if let Some(empty) = labels.iter().position(|l| l.trim().is_empty()) {
        bail!("label {} is empty", empty + 1);
    }
    match template.matches("{}").count() {
        1 => Ok(labels
            .iter()
            .map(|l| template.replacen("{}", l, 1))
            .collect()),
        0 => bail!("the template {template:?} has no {{}} for the label"),
        n => bail!("the template {template:?} has {n} {{}}: it takes one label"),
    }
}

/// Rows scaled to unit Euclidean length.
fn normalize_rows(xs: &Tensor) -> candle_core::Result<Tensor> {
    xs.broadcast_div(&xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_fill_the_template() {
        let labels = vec!["cat".to_string(), "a red car".to_string()];
        assert_eq!(
            label_texts(&labels, DEFAULT_TEMPLATE).unwrap(),
            ["This is a photo of cat.", "This is a photo of a red car."]
        );
        assert_eq!(label_texts(&labels, "{}").unwrap()[1], "a red car");
    }

    #[test]
    fn bad_templates_and_labels_are_refused() {
        let labels = vec!["cat".to_string()];
        let err = label_texts(&labels, "a photo").unwrap_err().to_string();
        assert!(err.contains("no {}"), "{err}");
        let err = label_texts(&labels, "{} or {}").unwrap_err().to_string();
        assert!(err.contains("has 2 {}"), "{err}");
        assert!(label_texts(&[], DEFAULT_TEMPLATE).is_err());
        let err = label_texts(&["cat".into(), " ".into()], DEFAULT_TEMPLATE).unwrap_err();
        assert!(err.to_string().contains("label 2 is empty"));
    }

    #[test]
    fn rows_are_normalized() {
        let xs = Tensor::new(&[[3f32, 4.0], [0.0, 2.0]], &Device::Cpu).unwrap();
        let rows = normalize_rows(&xs).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(rows, [[0.6, 0.8], [0.0, 1.0]]);
    }
}
