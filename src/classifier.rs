//! Classifying images end to end: decode, preprocess, batch, forward, rank.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::explain::BatchAttention;
use crate::inputs::Input;
use crate::model::config::PosInterpolation;
use crate::model::{EmbeddingKind, LoadedModel, ViTConfig, VisionTransformer};
use crate::preprocess::{load_rgb, PixelValues, PreprocessConfig};
use crate::zero_shot::ZeroShot;

/// One ranked class.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    pub index: usize,
    pub label: String,
    pub score: f32,
}

/// How logits become scores, as in HF's image-classification pipeline (`function_to_apply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreFunction {
    Softmax,
    Sigmoid,
    /// Raw logits.
    None,
}

impl ScoreFunction {
    /// HF's default: sigmoid for a single label, softmax otherwise.
    pub fn default_for(num_labels: usize) -> Self {
        if num_labels == 1 {
            Self::Sigmoid
        } else {
            Self::Softmax
        }
    }

    /// Scores of one row of logits.
    pub fn apply(self, logits: &[f32]) -> Vec<f32> {
        match self {
            Self::None => logits.to_vec(),
            Self::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
            Self::Softmax => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
                let total: f32 = exps.iter().sum();
                exps.iter().map(|e| e / total).collect()
            }
        }
    }
}

/// The `k` best classes of a row of scores, best first (ties: lower index first).
pub fn top_k(scores: &[f32], labels: &[String], k: usize) -> Vec<Prediction> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|index| Prediction {
            index,
            label: labels.get(index).cloned().unwrap_or_default(),
            score: scores[index],
        })
        .collect()
}

/// A rough upper estimate of the memory one image's forward pass needs beyond the weights,
/// in bytes: the rows a layer holds at once (tokens through the fused q, k, v, the attention
/// output and the MLP) and every head's attention scores (the standard path holds them all).
pub fn forward_bytes_estimate(config: &ViTConfig, height: usize, width: usize) -> u64 {
    let tokens = tokens(config, height, width) as u64;
    let (hidden, mlp) = (config.hidden_size as u64, config.intermediate_size as u64);
    let rows = tokens * (6 * hidden + 3 * mlp);
    let scores = config.num_attention_heads as u64 * tokens * tokens;
    4 * (rows + scores)
}

/// The tokens of an input of `height x width` pixels: its patches and the prefix tokens.
fn tokens(config: &ViTConfig, height: usize, width: usize) -> usize {
    let patch = config.patch_size.max(1);
    (height / patch) * (width / patch) + config.variant.prefix_tokens()
}

/// Refuses an input whose forward pass would not fit in the memory the system has
/// available (Linux's `MemAvailable`; no check where it cannot be read), naming the size
/// and the estimate, before anything is allocated.
fn check_forward_memory(config: &ViTConfig, height: usize, width: usize) -> Result<()> {
    let Some(available) = available_memory() else {
        return Ok(());
    };
    let needed = forward_bytes_estimate(config, height, width);
    if needed > available {
        let gb = |bytes: u64| bytes as f64 / 1e9;
        bail!(
            "a forward pass over {} tokens needs about {:.1} GB, more than the {:.1} GB \
             available",
            tokens(config, height, width),
            gb(needed),
            gb(available)
        );
    }
    Ok(())
}

/// The memory the system can still give, from `/proc/meminfo`.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A loaded model with its preprocessing, on a device: classifies and embeds images.
pub struct Classifier {
    pub model: VisionTransformer,
    pub config: ViTConfig,
    pub preprocess: PreprocessConfig,
    pub device: Device,
    /// Zero-shot labels, which replace the model's head.
    pub zero_shot: Option<ZeroShot>,
}

impl Classifier {
    /// Wraps a loaded model; `input_size` overrides the square input size (position embeddings
    /// are interpolated for sizes other than the config's).
    pub fn new(loaded: LoadedModel, device: Device, input_size: Option<usize>) -> Result<Self> {
        let LoadedModel {
            model,
            config,
            preprocess,
            ..
        } = loaded;
        let preprocess = match input_size {
            None => preprocess,
            Some(size) => {
                if size < config.patch_size || size % config.patch_size != 0 {
                    bail!(
                        "--image-size {size} is not a positive multiple of the model's patch size {}",
                        config.patch_size
                    );
                }
                let fixed = config.variant.pos_interpolation == PosInterpolation::Fixed;
                if fixed && size != config.image_size {
                    bail!(
                        "--image-size {size}: the model runs at {0}x{0} only, as HF runs it (its \
                         position embeddings are not resized)",
                        config.image_size
                    );
                }
                preprocess.with_input_size(size as u32)
            }
        };
        let (height, width) = preprocess.output_size(640, 480);
        check_forward_memory(&config, height as usize, width as usize).with_context(|| {
            match input_size {
                Some(size) => format!("--image-size {size}"),
                None => format!("an input of {height}x{width} pixels"),
            }
        })?;
        Ok(Self {
            model,
            config,
            preprocess,
            device,
            zero_shot: None,
        })
    }

    /// A classifier into `labels` with an image-text model: each label put into `template`
    /// and embedded by the text tower once (see [`ZeroShot`]).
    pub fn zero_shot(
        loaded: LoadedModel,
        device: Device,
        input_size: Option<usize>,
        labels: Vec<String>,
        template: &str,
    ) -> Result<Self> {
        let Some(text) = &loaded.text else {
            bail!("the model has no text tower: zero-shot labels need an image-text model (CLIP, SigLIP)");
        };
        let zero_shot = ZeroShot::new(text, labels, template, &device)?;
        let mut classifier = Self::new(loaded, device, input_size)?;
        classifier.zero_shot = Some(zero_shot);
        Ok(classifier)
    }

    /// The class names the logits are over: the zero-shot labels, or the model's.
    pub fn labels(&self) -> &[String] {
        match &self.zero_shot {
            Some(zero_shot) => &zero_shot.labels,
            None => &self.config.id2label,
        }
    }

    /// Decodes and preprocesses one file.
    pub fn pixel_values(&self, path: &Path) -> Result<PixelValues> {
        let image = load_rgb(path)?;
        Ok(self.preprocess.pixel_values(&image))
    }

    /// Decodes and preprocesses files in parallel; each result keeps its own error.
    pub fn pixel_values_many(&self, paths: &[PathBuf]) -> Vec<Result<PixelValues>> {
        paths.par_iter().map(|p| self.pixel_values(p)).collect()
    }

    /// Decodes and preprocesses a part of a work list in parallel: for each input, in order,
    /// its pixel values or why it has none.
    pub fn prepare(&self, inputs: &[Input]) -> Vec<Result<PixelValues>> {
        inputs
            .par_iter()
            .map(|input| match input {
                Input::Image(path) => self.pixel_values(path),
                Input::Invalid(_, reason) => Err(anyhow::anyhow!("{reason}")),
            })
            .collect()
    }

    /// Stacks preprocessed images into a `(tiles, 3, h, w)` tensor on the model's device: one
    /// row per image, or per tile for images cut into tiles.
    pub fn batch_tensor(&self, images: &[&PixelValues]) -> Result<Tensor> {
        let first = images.first().context("empty batch")?;
        let (h, w) = (first.height, first.width);
        if images.iter().any(|p| (p.height, p.width) != (h, w)) {
            bail!(
                "images of different preprocessed sizes cannot share a batch: use --batch-size 1"
            );
        }
        let rows: usize = images.iter().map(|p| p.tiles).sum();
        let flat: Vec<f32> = images.iter().flat_map(|p| p.data.iter().copied()).collect();
        Ok(Tensor::from_vec(flat, (rows, 3, h, w), &self.device)?)
    }

    /// Logits as f32 rows, one per image of the batch.
    pub fn logits(&self, images: &[&PixelValues]) -> Result<Vec<Vec<f32>>> {
        if images.iter().any(|p| p.tiles != 1) {
            bail!("images cut into tiles have no logits (the model is an encoder: use vit embed)");
        }
        self.logits_of_tensor(&self.batch_tensor(images)?)
    }

    /// Logits as f32 rows for a ready `(batch, channels, h, w)` tensor of pixel values.
    pub fn logits_of_tensor(&self, pixel_values: &Tensor) -> Result<Vec<Vec<f32>>> {
        let pixel_values = pixel_values.to_device(&self.device)?;
        let logits = match &self.zero_shot {
            Some(zero_shot) => zero_shot.logits(
                &self
                    .model
                    .embed(&pixel_values, EmbeddingKind::Auto)
                    .context("forward pass failed")?,
            )?,
            None => self
                .model
                .forward(&pixel_values)
                .context("forward pass failed")?,
        };
        Ok(logits
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?)
    }
}

impl Classifier {
    /// A batch's forward pass keeping every layer's attention probabilities (for attention
    /// maps): its outputs are the logits (the head's, or the zero-shot labels'), or the
    /// model's own embedding for a backbone.
    pub fn attentions(&self, images: &[&PixelValues]) -> Result<BatchAttention> {
        if images.iter().any(|p| p.tiles != 1) {
            bail!("images cut into tiles have no attention map");
        }
        let pixel_values = self.batch_tensor(images)?;
        let forward = self
            .model
            .output_with_attentions(&pixel_values)
            .context("forward pass failed")?;
        let outputs = match &self.zero_shot {
            Some(zero_shot) => zero_shot.logits(&forward.output)?,
            None => forward.output.clone(),
        };
        BatchAttention::new(&outputs, forward, self.model.prefix_tokens())
    }

    /// The embeddings `kind` of a batch as f32 values in row order with their shape, one per
    /// image: `(width)`, or `(tokens, hidden)` for [`EmbeddingKind::Tokens`]. An image cut
    /// into tiles has its tiles' tokens one after the other, and the mean of them all.
    pub fn embeddings(
        &self,
        images: &[&PixelValues],
        kind: EmbeddingKind,
    ) -> Result<Vec<(Vec<f32>, Vec<usize>)>> {
        let pixel_values = self.batch_tensor(images)?;
        let embeddings = self
            .model
            .embed(&pixel_values, kind)
            .context("forward pass failed")?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        let shape = embeddings.dims().to_vec();
        let values = embeddings.flatten_all()?.to_vec1::<f32>()?;
        let row_shape = shape[1..].to_vec();
        let per_row: usize = row_shape.iter().product();
        let mut rows = values.chunks(per_row.max(1));
        let mut out = Vec::with_capacity(images.len());
        for image in images {
            let tiles: Vec<&[f32]> = rows.by_ref().take(image.tiles).collect();
            out.push(match (image.tiles, kind) {
                (1, _) => (tiles[0].to_vec(), row_shape.clone()),
                (n, EmbeddingKind::Tokens) => {
                    let mut shape = row_shape.clone();
                    shape[0] *= n;
                    (tiles.concat(), shape)
                }
                // Every tile has as many tokens: the mean of their means is the mean of all.
                (n, EmbeddingKind::Mean | EmbeddingKind::Auto) => {
                    let mut mean = vec![0f32; per_row];
                    for tile in &tiles {
                        mean.iter_mut().zip(*tile).for_each(|(m, v)| *m += v);
                    }
                    mean.iter_mut().for_each(|m| *m /= n as f32);
                    (mean, row_shape.clone())
                }
                (_, EmbeddingKind::Class) => {
                    bail!("images cut into tiles have a class token per tile: use --pool tokens or mean")
                }
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_ranks_ties_by_index() {
        let scores = ScoreFunction::Softmax.apply(&[1.0, 3.0, 3.0, -2.0]);
        assert!((scores.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let labels: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let top = top_k(&scores, &labels, 3);
        assert_eq!(
            top.iter().map(|p| p.index).collect::<Vec<_>>(),
            vec![1, 2, 0]
        );
        assert_eq!(top[0].label, "b");
    }

    #[test]
    fn default_score_function_follows_hf_pipeline() {
        assert_eq!(ScoreFunction::default_for(1), ScoreFunction::Sigmoid);
        assert_eq!(ScoreFunction::default_for(1000), ScoreFunction::Softmax);
        assert_eq!(ScoreFunction::Sigmoid.apply(&[0.0]), vec![0.5]);
        assert_eq!(ScoreFunction::None.apply(&[2.5, -1.0]), vec![2.5, -1.0]);
    }
}
