//! Attention maps: where a model looked, from the attention probabilities of a forward pass
//! ([`crate::model::VisionTransformer::output_with_attentions`]), on the patch grid.
//!
//! Three methods, as the field computes them: one layer's attention of the class token to
//! the patches, mean over heads ([`Method::Attention`]) or per head ([`Method::ClassHeads`],
//! the DINO paper's figure); and attention rollout (Abnar & Zuidema, 2020) as
//! jacobgil/vit-explain computes it ([`Method::Rollout`]), with each row renormalised as
//! the paper says (that code divides columns: `a / a.sum(dim=-1)` without `keepdim`).
//! Models without a class token (SigLIP) are read through their attention pool's probe.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::model::Attentions;

/// How a map is made from the attention probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The query's attention to the patches in one layer, mean over heads.
    Attention,
    /// The same per head.
    ClassHeads,
    /// Attention rollout through the layers up to one.
    Rollout,
}

impl Method {
    /// The name used on the command line and in outputs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Attention => "attention",
            Self::ClassHeads => "class-heads",
            Self::Rollout => "rollout",
        }
    }
}

/// Whose attention a map follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// A token's row of the attention (the class token is 0; registers follow it).
    Token(usize),
    /// The attention pool's probe (models pooled by one, such as SigLIP).
    Probe,
}

/// A batch's forward pass with its attention probabilities, as f32 values on the CPU.
#[derive(Debug, Clone)]
pub struct BatchAttention {
    /// One row per image: logits (the head's, or zero-shot labels'), or the model's own
    /// embedding for a backbone.
    pub outputs: Vec<Vec<f32>>,
    /// Per layer, `(images, heads, tokens, tokens)` row-major.
    layers: Vec<Vec<f32>>,
    /// The attention pool's probe, `(images, heads, tokens)`.
    probe: Option<Vec<f32>>,
    pub heads: usize,
    pub tokens: usize,
    /// Tokens before the patches (class, distillation, registers).
    pub prefix: usize,
}

impl BatchAttention {
    /// Copies a forward pass's `outputs` rows and `attentions` to the CPU, each layer's
    /// tensor dropped once copied (so that its memory holds the next copy); `prefix` is the
    /// model's count of tokens before the patches.
    pub fn new(outputs: &Tensor, attentions: Attentions, prefix: usize) -> Result<Self> {
        let to_cpu = |tensor: &Tensor| -> Result<Vec<f32>> {
            Ok(tensor
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let first = attentions
            .layers
            .first()
            .context("the model has no layers")?;
        let (_, heads, tokens, _) = first.dims4()?;
        let layers = attentions
            .layers
            .into_iter()
            .enumerate()
            .map(|(index, layer)| {
                to_cpu(&layer).with_context(|| format!("attention of layer {index}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let probe = attentions.pool.as_ref().map(to_cpu).transpose()?;
        let outputs = outputs
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?;
        Ok(Self {
            outputs,
            layers,
            probe,
            heads,
            tokens,
            prefix,
        })
    }

    /// The model's layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Image `index`'s probabilities.
    pub fn image(&self, index: usize) -> ImageAttention<'_> {
        let square = self.heads * self.tokens * self.tokens;
        let row = self.heads * self.tokens;
        ImageAttention {
            layers: self
                .layers
                .iter()
                .map(|layer| &layer[index * square..(index + 1) * square])
                .collect(),
            probe: self
                .probe
                .as_deref()
                .map(|probe| &probe[index * row..(index + 1) * row]),
            heads: self.heads,
            tokens: self.tokens,
            prefix: self.prefix,
        }
    }
}

/// One image's attention probabilities, borrowed from a batch's.
#[derive(Debug, Clone)]
pub struct ImageAttention<'a> {
    /// Per layer, first layer first: `heads x tokens x tokens`, row-major, each row a query.
    pub layers: Vec<&'a [f32]>,
    /// The attention pool's probe over the tokens, `heads x tokens`, when the model has one.
    pub probe: Option<&'a [f32]>,
    pub heads: usize,
    pub tokens: usize,
    /// Tokens before the patches (class, distillation, registers).
    pub prefix: usize,
}

impl ImageAttention<'_> {
    /// Checks that every slice has the size the counts say.
    pub fn check(&self) -> Result<()> {
        let square = self.heads * self.tokens * self.tokens;
        if let Some(bad) = self.layers.iter().position(|layer| layer.len() != square) {
            bail!(
                "attention of layer {bad}: {} values for {} heads of {} tokens",
                self.layers[bad].len(),
                self.heads,
                self.tokens
            );
        }
        if let Some(probe) = self.probe {
            if probe.len() != self.heads * self.tokens {
                bail!(
                    "attention pool: {} values for {} heads of {} tokens",
                    probe.len(),
                    self.heads,
                    self.tokens
                );
            }
        }
        if self.prefix > self.tokens {
            bail!("{} prefix tokens of {}", self.prefix, self.tokens);
        }
        Ok(())
    }

    /// The patches: the tokens after the prefix.
    pub fn patches(&self) -> usize {
        self.tokens - self.prefix
    }

    /// `query`'s attention over every token in `layer`, one row per head (the probe's is
    /// the same in every layer: it attends once, after the last).
    fn rows(&self, layer: usize, query: Query) -> Result<Vec<&[f32]>> {
        let t = self.tokens;
        match query {
            Query::Probe => match self.probe {
                Some(probe) => Ok(probe.chunks(t).collect()),
                None => bail!("the model has no attention pool"),
            },
            Query::Token(row) => {
                if row >= t {
                    bail!("token {row} of {t}");
                }
                let Some(layer) = self.layers.get(layer) else {
                    bail!("layer {layer}: the model has {} layers", self.layers.len());
                };
                Ok(layer
                    .chunks(t * t)
                    .map(|head| &head[row * t..(row + 1) * t])
                    .collect())
            }
        }
    }

    /// `query`'s attention to the patches in `layer`, per head: `heads` maps of
    /// [`Self::patches`] values.
    pub fn head_maps(&self, layer: usize, query: Query) -> Result<Vec<Vec<f32>>> {
        Ok(self
            .rows(layer, query)?
            .into_iter()
            .map(|row| row[self.prefix..].to_vec())
            .collect())
    }

    /// `query`'s attention to the patches in `layer`, mean over heads.
    pub fn attention(&self, layer: usize, query: Query) -> Result<Vec<f32>> {
        let rows = self.rows(layer, query)?;
        Ok((self.prefix..self.tokens)
            .map(|column| rows.iter().map(|row| row[column]).sum::<f32>() / self.heads as f32)
            .collect())
    }

    /// Attention rollout of `query` through layers `0..=last`, over the patches, divided by
    /// its maximum. Per layer: the mean over heads; with `discard_ratio`, its lowest
    /// `floor(tokens^2 * ratio)` values set to zero (never the class token's own, the first);
    /// plus the identity, halved; each row divided by its sum. The rolled-out matrix is the
    /// product of the layers' from the first (`A_last ... A_0`); the map is the class token's
    /// row of it, or the probe's mean attention times it. Computed in f64.
    pub fn rollout(&self, last: usize, query: Query, discard_ratio: f64) -> Result<Vec<f32>> {
        let t = self.tokens;
        if last >= self.layers.len() {
            bail!("layer {last}: the model has {} layers", self.layers.len());
        }
        if !(0.0..1.0).contains(&discard_ratio) {
            bail!("the discard ratio {discard_ratio} is not in [0, 1)");
        }
        // The row of the product: e_row (or the probe's row) times each layer's matrix,
        // from the last layer to the first.
        let mut row: Vec<f64> = match query {
            Query::Token(index) => {
                let mut row = vec![0.0; t];
                *row.get_mut(index)
                    .ok_or_else(|| anyhow::anyhow!("token {index} of {t}"))? = 1.0;
                row
            }
            Query::Probe => {
                let rows = self.rows(0, Query::Probe)?;
                (0..t)
                    .map(|j| rows.iter().map(|r| r[j] as f64).sum::<f64>() / self.heads as f64)
                    .collect()
            }
        };
        let mut fused = vec![0f64; t];
        for layer in self.layers[..=last].iter().rev() {
            let discarded = self.discarded(layer, discard_ratio);
            let mut next = vec![0.0; t];
            for (i, &weight) in row.iter().enumerate().filter(|(_, &w)| w != 0.0) {
                let scale = weight / self.fused_row(layer, i, &discarded, &mut fused);
                for (out, value) in next.iter_mut().zip(&fused) {
                    *out += scale * value;
                }
            }
            row = next;
        }
        let patches = &row[self.prefix..];
        let max = patches.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Ok(patches
            .iter()
            .map(|&value| match max > 0.0 {
                true => (value / max) as f32,
                false => 0.0,
            })
            .collect())
    }

    /// Row `i` of one layer's rollout matrix (see [`Self::rollout`]) times `2 * heads` in
    /// `fused`, and the sum it is divided by: the heads' sum with the `discarded` values
    /// zeroed (none when it is empty), plus `heads` on the diagonal. (Twice the mean plus the
    /// identity, halved, over its row's sum, is this over its sum.)
    fn fused_row(&self, layer: &[f32], i: usize, discarded: &[bool], fused: &mut [f64]) -> f64 {
        let t = self.tokens;
        let mut heads = layer.chunks(t * t).map(|head| &head[i * t..(i + 1) * t]);
        let first = heads.next().unwrap_or_default();
        fused
            .iter_mut()
            .zip(first)
            .for_each(|(f, &p)| *f = p as f64);
        for row in heads {
            fused.iter_mut().zip(row).for_each(|(f, &p)| *f += p as f64);
        }
        if let Some(discarded) = discarded.get(i * t..(i + 1) * t) {
            for (value, _) in fused.iter_mut().zip(discarded).filter(|(_, &d)| d) {
                *value = 0.0;
            }
        }
        fused[i] += self.heads as f64;
        fused.iter().sum()
    }

    /// Which of one layer's `tokens x tokens` head-mean values a discard ratio zeroes: the
    /// lowest `floor(tokens^2 * ratio)` (ties by position), never the first (the class
    /// token's own). Empty when none are.
    fn discarded(&self, layer: &[f32], discard_ratio: f64) -> Vec<bool> {
        let t = self.tokens;
        let count = ((t * t) as f64 * discard_ratio) as usize;
        if count == 0 {
            return Vec::new();
        }
        let mut mean = vec![0f64; t * t];
        for head in layer.chunks(t * t) {
            mean.iter_mut().zip(head).for_each(|(m, &p)| *m += p as f64);
        }
        let mut order: Vec<usize> = (0..t * t).collect();
        order.sort_by(|&a, &b| mean[a].total_cmp(&mean[b]).then(a.cmp(&b)));
        let mut discarded = vec![false; t * t];
        for &index in &order[..count] {
            discarded[index] = index != 0;
        }
        discarded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two layers of one head over three tokens (a class token and two patches).
    fn two_layers() -> (Vec<f32>, Vec<f32>) {
        let first = vec![0.5, 0.25, 0.25, 0.0, 1.0, 0.0, 0.2, 0.2, 0.6];
        let second = vec![0.1, 0.6, 0.3, 0.5, 0.5, 0.0, 0.0, 0.0, 1.0];
        (first, second)
    }

    #[test]
    fn attention_maps_read_the_query_row_over_the_patches() {
        // Two heads of two tokens, one prefix token.
        let layer = [0.2, 0.8, 0.5, 0.5, 0.6, 0.4, 0.1, 0.9];
        let image = ImageAttention {
            layers: vec![&layer],
            probe: None,
            heads: 2,
            tokens: 2,
            prefix: 1,
        };
        image.check().unwrap();
        assert_eq!(image.head_maps(0, Query::Token(0)).unwrap(), [[0.8], [0.4]]);
        assert_eq!(image.attention(0, Query::Token(0)).unwrap(), [0.6]);
        assert_eq!(image.attention(0, Query::Token(1)).unwrap(), [0.7]);
        assert!(image.attention(1, Query::Token(0)).is_err());
        assert!(image.attention(0, Query::Probe).is_err());
    }

    #[test]
    fn rollout_is_the_class_row_of_the_product_of_the_layers_matrices() {
        let (first, second) = two_layers();
        let image = ImageAttention {
            layers: vec![&first, &second],
            probe: None,
            heads: 1,
            tokens: 3,
            prefix: 1,
        };
        // By hand: each layer's (A + I) / 2 (rows already sum to one), then A1 * A0.
        let half = |a: &[f32]| -> Vec<f64> {
            (0..9)
                .map(|k| (a[k] as f64 + if k % 4 == 0 { 1.0 } else { 0.0 }) / 2.0)
                .collect()
        };
        let (a0, a1) = (half(&first), half(&second));
        let product: Vec<f64> = (0..3)
            .map(|j| (0..3).map(|k| a1[k] * a0[k * 3 + j]).sum())
            .collect();
        let max = product[1].max(product[2]);
        let expected = [product[1] / max, product[2] / max];
        let got = image.rollout(1, Query::Token(0), 0.0).unwrap();
        for (g, e) in got.iter().zip(expected) {
            assert!((*g as f64 - e).abs() < 1e-7, "{got:?} vs {expected:?}");
        }
        // Through the first layer only: its class row over the patches, (0.125, 0.125).
        assert_eq!(image.rollout(0, Query::Token(0), 0.0).unwrap(), [1.0, 1.0]);
    }

    #[test]
    fn discarding_zeroes_the_lowest_values_but_the_class_tokens_own() {
        // The three smallest of 9 (ratio 0.34: floor(3.06) = 3) are 0.0 at index 0 (kept), 0.0
        // at index 3 and 0.05 at index 1; rows are then renormalised.
        let layer = [0.0, 0.05, 0.95, 0.0, 0.5, 0.5, 0.3, 0.3, 0.4];
        let image = ImageAttention {
            layers: vec![&layer],
            probe: None,
            heads: 1,
            tokens: 3,
            prefix: 1,
        };
        let discarded = image.discarded(&layer, 0.34);
        let expected: Vec<bool> = (0..9).map(|i| i == 1 || i == 3).collect();
        assert_eq!(discarded, expected);
        // Row 0 of the one head: (0 + 1, 0, 0.95), over its sum 1.95.
        let mut row = [0.0; 3];
        let sum = image.fused_row(&layer, 0, &discarded, &mut row);
        for (got, expected) in row.iter().zip([1.0, 0.0, 0.95]) {
            assert!((got - expected).abs() < 1e-7, "{row:?}");
        }
        assert!((sum - 1.95).abs() < 1e-7);
        let kept = image.rollout(0, Query::Token(0), 0.0).unwrap();
        let discarded = image.rollout(0, Query::Token(0), 0.34).unwrap();
        assert_eq!(discarded, [0.0, 1.0]);
        assert!(kept[0] > 0.0);
        assert!(image.rollout(0, Query::Token(0), 1.0).is_err());
    }

    #[test]
    fn the_probe_reads_the_pool_attention_and_rolls_out_through_every_layer() {
        // Two heads with the same attention, and a probe whose heads differ.
        let (first, _) = two_layers();
        let two_heads: Vec<f32> = first.iter().chain(&first).copied().collect();
        let probe = [0.2, 0.3, 0.5, 0.4, 0.3, 0.3];
        let image = ImageAttention {
            layers: vec![&two_heads],
            probe: Some(&probe),
            heads: 2,
            tokens: 3,
            prefix: 0,
        };
        image.check().unwrap();
        let mean = image.attention(0, Query::Probe).unwrap();
        let expected = [0.3, 0.3, 0.4];
        for (g, e) in mean.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{mean:?}");
        }
        // p (A + I) / 2, divided by its maximum.
        let a = |i: usize, j: usize| (first[i * 3 + j] as f64 + f64::from(i == j)) / 2.0;
        let p = [0.3, 0.3, 0.4];
        let row: Vec<f64> = (0..3)
            .map(|j| (0..3).map(|i| p[i] * a(i, j)).sum())
            .collect();
        let max = row.iter().copied().fold(0.0, f64::max);
        let got = image.rollout(0, Query::Probe, 0.0).unwrap();
        for (g, r) in got.iter().zip(&row) {
            assert!((*g as f64 - r / max).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn mismatched_sizes_are_errors() {
        let layer = [0.5; 7];
        let image = ImageAttention {
            layers: vec![&layer],
            probe: None,
            heads: 1,
            tokens: 3,
            prefix: 1,
        };
        assert!(image.check().is_err());
    }
}
