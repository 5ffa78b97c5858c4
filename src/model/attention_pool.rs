//! Multihead attention pooling (SigLIP's `SiglipMultiheadAttentionPoolingHead`, timm's
//! `global_pool='map'`): a learned probe token attends over all tokens, then a layer norm and
//! an MLP with a residual; the probe's state is the pooled embedding.
//!
//! Canonical tensor names are under `vit.attention_pool`: `probe` `(1, 1, hidden)`, the
//! attention as a layer's (`attention.attention.{query,key,value}`, `attention.output.dense`),
//! `layernorm`, and the MLP as a layer's (`intermediate.dense`, `output.dense`).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{BlockConfig, MlpKind};
use super::encoder::{softmax_last_dim, Mlp, ModelOptions};
use super::layers::{LayerNorm, Linear};

/// The canonical name and shape of every tensor of an attention pool of `block`'s sizes
/// under `prefix`.
pub fn attention_pool_tensors(prefix: &str, block: &BlockConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (block.hidden_size, block.intermediate_size);
    let mut tensors = vec![(format!("{prefix}.probe"), vec![1, 1, h])];
    for projection in [
        "attention.attention.query",
        "attention.attention.key",
        "attention.attention.value",
        "attention.output.dense",
    ] {
        tensors.push((format!("{prefix}.{projection}.weight"), vec![h, h]));
        tensors.push((format!("{prefix}.{projection}.bias"), vec![h]));
    }
    for param in ["weight", "bias"] {
        tensors.push((format!("{prefix}.layernorm.{param}"), vec![h]));
    }
    tensors.extend([
        (format!("{prefix}.intermediate.dense.weight"), vec![i, h]),
        (format!("{prefix}.intermediate.dense.bias"), vec![i]),
        (format!("{prefix}.output.dense.weight"), vec![h, i]),
        (format!("{prefix}.output.dense.bias"), vec![h]),
    ]);
    tensors
}

/// The pooling head: `mlp(ln(a)) + a` with `a = attention(probe, tokens)`.
#[derive(Debug, Clone)]
pub struct AttentionPool {
    /// The probe's query, computed once at load: `(1, 1, hidden)`.
    query: Tensor,
    key_value: Linear,
    output: Linear,
    layernorm: LayerNorm,
    mlp: Mlp,
    num_heads: usize,
}

impl AttentionPool {
    /// `vb` is the `attention_pool` scope; `block` gives the sizes, activation and norm eps.
    pub fn new(vb: VarBuilder, block: &BlockConfig, options: ModelOptions) -> Result<Self> {
        let h = block.hidden_size;
        let probe = vb.get((1, 1, h), "probe")?;
        let attention = vb.pp("attention").pp("attention");
        let projection = |name: &str| -> Result<(Tensor, Tensor)> {
            let vb = attention.pp(name);
            Ok((vb.get((h, h), "weight")?, vb.get(h, "bias")?))
        };
        let (query_weight, query_bias) = projection("query")?;
        let (key_weight, key_bias) = projection("key")?;
        let (value_weight, value_bias) = projection("value")?;
        let query = Linear::new(query_weight, Some(query_bias), options.isa)?.forward(&probe)?;
        let mlp_block = BlockConfig {
            mlp: MlpKind::Standard,
            layer_scale: false,
            ..block.clone()
        };
        Ok(Self {
            query,
            key_value: Linear::stacked(
                vec![key_weight, value_weight],
                Some(Tensor::cat(&[key_bias, value_bias], 0)?),
                options.isa,
            )?,
            output: Linear::load(
                vb.pp("attention").pp("output").pp("dense"),
                h,
                h,
                options.isa,
            )?,
            layernorm: LayerNorm::load(vb.pp("layernorm"), h, block.layer_norm_eps)?,
            mlp: Mlp::new(vb, &mlp_block, None, options)?,
            num_heads: block.num_attention_heads,
        })
    }

    /// `(batch, tokens, hidden)` to the pooled `(batch, hidden)`.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_probabilities(tokens)?.0)
    }

    /// The pooled `(batch, hidden)` and the probe's attention probabilities over the tokens,
    /// `(batch, heads, tokens)`.
    pub fn forward_with_probabilities(&self, tokens: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, n, h) = tokens.dims3()?;
        let (heads, head_dim) = (self.num_heads, h / self.num_heads);
        let key_value = self
            .key_value
            .forward(tokens)?
            .reshape((b, n, 2, heads, head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let key = key_value.get(0)?.contiguous()?;
        let value = key_value.get(1)?.contiguous()?;
        let query = self
            .query
            .reshape((1, 1, heads, head_dim))?
            .transpose(1, 2)?
            .broadcast_as((b, heads, 1, head_dim))?
            .contiguous()?;
        let scores = (query.matmul(&key.t()?)? / (head_dim as f64).sqrt())?;
        let weights = softmax_last_dim(&scores)?;
        let context = weights
            .matmul(&value)?
            .transpose(1, 2)?
            .reshape((b, 1, h))?;
        let attended = self.output.forward(&context)?;
        let pooled = self
            .mlp
            .forward(&self.layernorm.forward(&attended)?, Some(&attended))?
            .squeeze(1)?;
        Ok((pooled, weights.squeeze(2)?))
    }
}
