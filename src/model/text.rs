//! The text tower of a contrastive image-text model (CLIP, SigLIP): token and position
//! embeddings, the same pre-norm blocks as the image tower ([`super::encoder::Layer`]) under a
//! causal mask (CLIP) or none (SigLIP), a final layer norm, one token pooled, and a projection
//! into the image embedding space.
//!
//! Canonical tensor names are under `text.` (`text.embeddings.token_embedding.weight`,
//! `text.encoder.layer.N...` as the image tower's layers, `text.final_layer_norm`,
//! `text.projection`); each layout renames its checkpoint onto them.

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{Activation, Biases, BlockConfig, MlpKind};
use super::encoder::{Layer, ModelOptions};
use super::layers::{LayerNorm, Linear};
use super::weights::layer_tensors;

/// Which token's state is the text's embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextPooling {
    /// The first end-of-text token `id` (HF CLIP's current configs).
    FirstToken(u32),
    /// The token with the highest id, which CLIP's end-of-text token is (HF CLIP with the
    /// legacy `eos_token_id` 2).
    HighestId,
    /// The last position, padding included (SigLIP).
    LastToken,
}

/// The loss an image-text model was trained with, which says how its logits become scores and
/// whether they have a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContrastiveLoss {
    /// CLIP: a softmax over the labels of `exp(logit_scale) * cosine`.
    Softmax,
    /// SigLIP: a sigmoid per label of `exp(logit_scale) * cosine + logit_bias`.
    Sigmoid,
}

/// The architecture of a text tower.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// The longest text, in tokens (the position embeddings).
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub pooling: TextPooling,
    /// Width of the projected embedding (CLIP's `text_projection`, SigLIP's `head`).
    pub projection_dim: usize,
    /// Whether the projection has a bias (SigLIP's does, CLIP's not).
    pub projection_bias: bool,
    /// Whether each token sees only those before it (CLIP), or all unpadded tokens (SigLIP).
    pub causal: bool,
    /// Whether texts are padded to the whole context, as the model was trained (SigLIP).
    pub padded: bool,
    pub loss: ContrastiveLoss,
}

impl TextConfig {
    /// Checks the sizes the network relies on.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::Context;
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("projection_dim", self.projection_dim),
        ];
        super::config::require_positive(&positive).context("text_config")?;
        self.block().check_heads().context("text_config")
    }

    /// The configuration of each block.
    pub fn block(&self) -> BlockConfig {
        BlockConfig {
            hidden_size: self.hidden_size,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
            biases: Biases::with_qkv(true),
            layer_scale: false,
            mlp: MlpKind::Standard,
            mlp_norm: false,
        }
    }

    /// The canonical name and shape of every tensor of the tower (check its layers first
    /// with [`super::weights::check_layers`]: the list grows with the layer count).
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden_size;
        let mut tensors = vec![
            (
                "text.embeddings.token_embedding.weight".to_string(),
                vec![self.vocab_size, h],
            ),
            (
                "text.embeddings.position_embedding.weight".to_string(),
                vec![self.max_position_embeddings, h],
            ),
        ];
        let block = self.block();
        for layer in 0..self.num_hidden_layers {
            tensors.extend(layer_tensors(
                &format!("text.encoder.layer.{layer}"),
                &block,
            ));
        }
        for param in ["weight", "bias"] {
            tensors.push((format!("text.final_layer_norm.{param}"), vec![h]));
        }
        tensors.push((
            "text.projection.weight".to_string(),
            vec![self.projection_dim, h],
        ));
        if self.projection_bias {
            tensors.push((
                "text.projection.bias".to_string(),
                vec![self.projection_dim],
            ));
        }
        tensors
    }

    /// The names and shapes of the logit scale (and bias) as HF stores them: a scalar for
    /// CLIP, one-element vectors for SigLIP.
    pub fn logit_tensors(&self) -> Vec<(String, Vec<usize>)> {
        match self.loss {
            ContrastiveLoss::Softmax => vec![("logit_scale".to_string(), Vec::new())],
            ContrastiveLoss::Sigmoid => vec![
                ("logit_scale".to_string(), vec![1]),
                ("logit_bias".to_string(), vec![1]),
            ],
        }
    }
}

/// The text tower: token ids to projected text embeddings.
#[derive(Debug, Clone)]
pub struct TextTransformer {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_layer_norm: LayerNorm,
    projection: Linear,
    pooling: TextPooling,
    causal: bool,
    max_positions: usize,
}

impl TextTransformer {
    /// `vb` is the `text` scope of the canonical names.
    pub fn new(vb: VarBuilder, cfg: &TextConfig, options: ModelOptions) -> Result<Self> {
        let h = cfg.hidden_size;
        let block = cfg.block();
        let embeddings = vb.pp("embeddings");
        // Text is short and its attention masked: the standard kernel serves it everywhere.
        let options = ModelOptions {
            attention: super::AttentionKernel::Standard,
            ..options
        };
        Ok(Self {
            token_embedding: embeddings
                .pp("token_embedding")
                .get((cfg.vocab_size, h), "weight")?,
            position_embedding: embeddings
                .pp("position_embedding")
                .get((cfg.max_position_embeddings, h), "weight")?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| Layer::new(vb.pp("encoder").pp("layer").pp(i), &block, options))
                .collect::<Result<Vec<_>>>()?,
            final_layer_norm: LayerNorm::load(vb.pp("final_layer_norm"), h, cfg.layer_norm_eps)?,
            projection: Linear::new(
                vb.pp("projection").get((cfg.projection_dim, h), "weight")?,
                match cfg.projection_bias {
                    true => Some(vb.pp("projection").get(cfg.projection_dim, "bias")?),
                    false => None,
                },
                options.isa,
            )?,
            pooling: cfg.pooling,
            causal: cfg.causal,
            max_positions: cfg.max_position_embeddings,
        })
    }

    /// The projected embedding of one text's token ids, `(projection_dim,)`, of which the
    /// first `attended` are the text and the rest padding that no token attends to.
    pub fn embed(&self, ids: &[u32], attended: usize) -> Result<Tensor> {
        let len = ids.len();
        if len == 0 || len > self.max_positions {
            candle_core::bail!(
                "a text of {len} tokens (the model takes 1 to {})",
                self.max_positions
            );
        }
        if attended == 0 || attended > len {
            candle_core::bail!("{attended} attended tokens of {len}");
        }
        let device = self.token_embedding.device();
        let index = Tensor::new(ids, device)?;
        let xs = self
            .token_embedding
            .index_select(&index, 0)?
            .add(&self.position_embedding.narrow(0, 0, len)?)?
            .unsqueeze(0)?;
        let mask = match (self.causal, attended < len) {
            (true, _) => Some(causal_mask(len, xs.dtype(), device)?),
            (false, true) => Some(padding_mask(len, attended, xs.dtype(), device)?),
            (false, false) => None,
        };
        let mut xs = xs;
        for layer in &self.layers {
            xs = layer.forward_masked(&xs, mask.as_ref(), None, None)?;
        }
        let xs = self.final_layer_norm.forward(&xs)?;
        let position = match self.pooling {
            TextPooling::FirstToken(id) => ids.iter().position(|&t| t == id).unwrap_or(len - 1),
            TextPooling::HighestId => {
                let highest = ids.iter().max().copied().unwrap_or(0);
                ids.iter().position(|&t| t == highest).unwrap_or(0)
            }
            TextPooling::LastToken => len - 1,
        };
        let pooled = xs.i((.., position..position + 1, ..))?.squeeze(1)?;
        self.projection.forward(&pooled)?.squeeze(0)
    }
}

/// `(len, len)`: 0 on and below the diagonal, `-inf` above it.
fn causal_mask(len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (len, len), device)?.to_dtype(dtype)
}

/// `(len, len)`: 0 for the first `attended` columns, `-inf` for the padding after them.
fn padding_mask(len: usize, attended: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let row: Vec<f32> = (0..len)
        .map(|j| if j < attended { 0.0 } else { f32::NEG_INFINITY })
        .collect();
    Tensor::from_vec(row, (1, len), device)?
        .broadcast_as((len, len))?
        .contiguous()?
        .to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_padding_mask_hides_the_padding_from_every_token() {
        let mask = padding_mask(3, 2, DType::F32, &Device::Cpu).unwrap();
        let rows = mask.to_vec2::<f32>().unwrap();
        assert_eq!(rows[0], [0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(rows[2], [0.0, 0.0, f32::NEG_INFINITY]);
    }

    #[test]
    fn the_causal_mask_hides_later_tokens() {
        let mask = causal_mask(3, DType::F32, &Device::Cpu).unwrap();
        let rows = mask.to_vec2::<f32>().unwrap();
        assert_eq!(rows[0], [0.0, f32::NEG_INFINITY, f32::NEG_INFINITY]);
        assert_eq!(rows[2], [0.0, 0.0, 0.0]);
    }
}
