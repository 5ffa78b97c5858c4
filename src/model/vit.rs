//! The Vision Transformer of HF `ViTForImageClassification`, one struct per layer.
//!
//! Tensor names follow the HF checkpoint layout (`vit.embeddings...`, `vit.encoder.layer.N...`,
//! `vit.layernorm`, `classifier`), so a [`VarBuilder`] over an HF state dict builds the model
//! directly. The same code trains: built over a `VarMap` with [`ModelOptions::differentiable`],
//! every op on the path has a backward pass.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::attention::AttentionKernel;
use super::config::{Activation, ViTConfig};
use super::cpu_kernels;
use super::layers::{LayerNorm, Linear};
use super::posembed::interpolate_patch_positions;
use crate::kernels::Isa;

/// Choices that change how the network computes, not what it computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelOptions {
    /// The attention kernel.
    pub attention: AttentionKernel,
    /// Use ops with a backward pass (for training) instead of the fused inference kernels.
    pub differentiable: bool,
    /// The CPU engine's instruction set for f32 inference (default: [`Isa::current`]).
    pub isa: Isa,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            attention: AttentionKernel::Standard,
            differentiable: false,
            isa: Isa::current(),
        }
    }
}

/// Splits images into patches and projects them: HF's `patch_embeddings.projection`, a
/// stride-`patch` convolution, computed as one matrix product over flattened patches.
#[derive(Debug, Clone)]
pub struct PatchEmbeddings {
    projection: Linear,
    patch_size: usize,
    num_channels: usize,
}

impl PatchEmbeddings {
    pub fn new(vb: VarBuilder, cfg: &ViTConfig, options: ModelOptions) -> Result<Self> {
        let (h, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let vb = vb.pp("projection");
        let weight = vb.get((h, c, p, p), "weight")?.reshape((h, c * p * p))?;
        let bias = vb.get(h, "bias")?;
        Ok(Self {
            projection: Linear::new(weight, Some(bias), options.differentiable, options.isa)?,
            patch_size: p,
            num_channels: c,
        })
    }

    /// `(batch, channels, height, width)` to `(batch, patches, hidden)`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixel_values.dims4()?;
        if c != self.num_channels {
            candle_core::bail!(
                "pixel_values have {c} channels but the model expects {}",
                self.num_channels
            );
        }
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let patches = pixel_values
            .narrow(2, 0, gh * p)?
            .narrow(3, 0, gw * p)?
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, gh * gw, c * p * p))?;
        self.projection.forward(&patches)
    }
}

/// Class token, patch embeddings and position embeddings.
#[derive(Debug, Clone)]
pub struct Embeddings {
    cls_token: Tensor,
    position_embeddings: Tensor,
    patch_embeddings: PatchEmbeddings,
    patch_size: usize,
    grid_size: usize,
}

impl Embeddings {
    pub fn new(vb: VarBuilder, cfg: &ViTConfig, options: ModelOptions) -> Result<Self> {
        let h = cfg.hidden_size;
        let positions = cfg.grid_size() * cfg.grid_size() + 1;
        Ok(Self {
            cls_token: vb.get((1, 1, h), "cls_token")?,
            position_embeddings: vb.get((1, positions, h), "position_embeddings")?,
            patch_embeddings: PatchEmbeddings::new(vb.pp("patch_embeddings"), cfg, options)?,
            patch_size: cfg.patch_size,
            grid_size: cfg.grid_size(),
        })
    }

    /// Position embeddings for an input of `height` x `width` pixels: the stored ones at the
    /// config's size, else bicubically interpolated as HF's `interpolate_pos_encoding` does.
    fn positions_for(&self, height: usize, width: usize) -> Result<Tensor> {
        let (gh, gw) = (height / self.patch_size, width / self.patch_size);
        if gh == self.grid_size && gw == self.grid_size {
            return Ok(self.position_embeddings.clone());
        }
        let class_position = self.position_embeddings.narrow(1, 0, 1)?;
        let patch_positions =
            self.position_embeddings
                .narrow(1, 1, self.grid_size * self.grid_size)?;
        let resized = interpolate_patch_positions(&patch_positions, self.grid_size, (gh, gw))?;
        Tensor::cat(&[&class_position, &resized], 1)
    }

    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, _, height, width) = pixel_values.dims4()?;
        let patches = self.patch_embeddings.forward(pixel_values)?;
        let cls = self
            .cls_token
            .broadcast_as((b, 1, self.cls_token.dim(2)?))?;
        let tokens = Tensor::cat(&[&cls, &patches], 1)?;
        tokens.broadcast_add(&self.positions_for(height, width)?)
    }
}

/// Multi-head self-attention with query, key and value fused into one projection at load time.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    qkv: Linear,
    output: Linear,
    num_heads: usize,
    head_dim: usize,
    kernel: AttentionKernel,
    differentiable: bool,
    isa: Isa,
}

impl SelfAttention {
    /// `vb` is HF's `attention` scope of one layer.
    pub fn new(vb: VarBuilder, cfg: &ViTConfig, options: ModelOptions) -> Result<Self> {
        let h = cfg.hidden_size;
        let inner = vb.pp("attention");
        let mut weights = Vec::with_capacity(3);
        let mut biases = Vec::with_capacity(3);
        for name in ["query", "key", "value"] {
            let vb = inner.pp(name);
            weights.push(vb.get((h, h), "weight")?);
            if cfg.qkv_bias {
                biases.push(vb.get(h, "bias")?);
            }
        }
        let qkv_bias = if cfg.qkv_bias {
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Ok(Self {
            qkv: Linear::stacked(weights, qkv_bias, options.differentiable, options.isa)?,
            output: Linear::load(
                vb.pp("output").pp("dense"),
                h,
                h,
                options.differentiable,
                options.isa,
            )?,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            kernel: options.attention,
            differentiable: options.differentiable,
            isa: options.isa,
        })
    }

    /// Attention over `xs`, plus `residual` (added by the output projection as it stores).
    pub fn forward(&self, xs: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let (b, s, h) = xs.dims3()?;
        let qkv = self
            .qkv
            .forward(xs)?
            .reshape((b, s, 3, self.num_heads, self.head_dim))?;
        let context = self.kernel.attend(&qkv, self.differentiable, self.isa)?;
        self.output.forward_fused(
            &context.reshape((b, s, h))?,
            None,
            residual,
            self.differentiable,
        )
    }
}

/// The two-layer MLP of a block, with its activation.
#[derive(Debug, Clone)]
pub struct Mlp {
    intermediate: Linear,
    output: Linear,
    activation: Activation,
    differentiable: bool,
}

impl Mlp {
    /// `vb` is the layer scope (HF keeps `intermediate` and `output` side by side).
    pub fn new(vb: VarBuilder, cfg: &ViTConfig, options: ModelOptions) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (differentiable, isa) = (options.differentiable, options.isa);
        Ok(Self {
            intermediate: Linear::load(
                vb.pp("intermediate").pp("dense"),
                h,
                i,
                differentiable,
                isa,
            )?,
            output: Linear::load(vb.pp("output").pp("dense"), i, h, differentiable, isa)?,
            activation: cfg.hidden_act,
            differentiable,
        })
    }

    /// The MLP over `xs`, plus `residual`: the activation and the residual are applied by
    /// the two products as they store.
    pub fn forward(&self, xs: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let hidden = self.intermediate.forward_fused(
            xs,
            Some(self.activation),
            None,
            self.differentiable,
        )?;
        self.output
            .forward_fused(&hidden, None, residual, self.differentiable)
    }
}

/// Applies an activation function; `differentiable` keeps to ops with a backward pass.
pub fn activate(xs: &Tensor, activation: Activation, differentiable: bool) -> Result<Tensor> {
    match activation {
        Activation::Gelu if differentiable => xs.gelu_erf(),
        Activation::Gelu => cpu_kernels::gelu_erf(xs),
        Activation::GeluTanh => xs.gelu(),
        Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
        Activation::Relu => xs.relu(),
        Activation::Silu => xs.silu(),
    }
}

/// One pre-norm transformer block: `x + attn(ln(x))`, then `x + mlp(ln(x))`.
#[derive(Debug, Clone)]
pub struct Layer {
    layernorm_before: LayerNorm,
    attention: SelfAttention,
    layernorm_after: LayerNorm,
    mlp: Mlp,
}

impl Layer {
    pub fn new(vb: VarBuilder, cfg: &ViTConfig, options: ModelOptions) -> Result<Self> {
        let norm = |name: &str| {
            LayerNorm::load(
                vb.pp(name),
                cfg.hidden_size,
                cfg.layer_norm_eps,
                options.differentiable,
            )
        };
        Ok(Self {
            layernorm_before: norm("layernorm_before")?,
            attention: SelfAttention::new(vb.pp("attention"), cfg, options)?,
            layernorm_after: norm("layernorm_after")?,
            mlp: Mlp::new(vb.clone(), cfg, options)?,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self
            .attention
            .forward(&self.layernorm_before.forward(xs)?, Some(xs))?;
        self.mlp
            .forward(&self.layernorm_after.forward(&xs)?, Some(&xs))
    }
}

/// The ViT backbone: embeddings, blocks, final layer norm (HF's `ViTModel` without pooler).
#[derive(Debug, Clone)]
pub struct ViTModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    layernorm: LayerNorm,
}

impl ViTModel {
    pub fn new(vb: VarBuilder, cfg: &ViTConfig, options: ModelOptions) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(vb.pp("encoder").pp("layer").pp(i), cfg, options))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: Embeddings::new(vb.pp("embeddings"), cfg, options)?,
            layers,
            layernorm: LayerNorm::load(
                vb.pp("layernorm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
                options.differentiable,
            )?,
        })
    }

    /// `(batch, channels, height, width)` to the normalized tokens `(batch, 1 + patches, hidden)`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let mut xs = self.embeddings.forward(pixel_values)?;
        for layer in &self.layers {
            xs = layer.forward(&xs)?;
        }
        self.layernorm.forward(&xs)
    }
}

/// HF's `ViTForImageClassification`: the backbone and a linear head on the class token.
#[derive(Debug, Clone)]
pub struct ViTForImageClassification {
    vit: ViTModel,
    classifier: Linear,
    dtype: DType,
}

impl ViTForImageClassification {
    pub fn new(vb: VarBuilder, cfg: &ViTConfig, options: ModelOptions) -> Result<Self> {
        Ok(Self {
            vit: ViTModel::new(vb.pp("vit"), cfg, options)?,
            classifier: Linear::load(
                vb.pp("classifier"),
                cfg.hidden_size,
                cfg.num_labels(),
                options.differentiable,
                options.isa,
            )?,
            dtype: vb.dtype(),
        })
    }

    /// The class token's features after the final layer norm, `(batch, hidden)`.
    pub fn features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let tokens = self.vit.forward(&pixel_values.to_dtype(self.dtype)?)?;
        tokens.narrow(1, 0, 1)?.squeeze(1)
    }

    /// Classification logits `(batch, num_labels)`, in the model's dtype.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        on_cpu_workers(pixel_values, || {
            self.classifier.forward(&self.features(pixel_values)?)
        })
    }

    /// The dtype the weights are held in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

impl Module for ViTForImageClassification {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        ViTForImageClassification::forward(self, xs)
    }
}

/// Runs `forward` on one of rayon's worker threads when `input` is on the CPU: each parallel
/// kernel inside then starts on a worker, which takes the first part itself, instead of the
/// calling thread handing every kernel over and sleeping until it ends (a wake-up per kernel:
/// a fifth of DeiT-Tiny's time at batch 1).
fn on_cpu_workers<R: Send>(input: &Tensor, forward: impl FnOnce() -> R + Send) -> R {
    match input.device().is_cpu() {
        true => rayon::scope(|_| forward()),
        false => forward(),
    }
}

/// Numerically stable softmax over the last dimension, with a backward pass when `differentiable`.
pub fn softmax_last_dim(xs: &Tensor, differentiable: bool) -> Result<Tensor> {
    if differentiable {
        candle_nn::ops::softmax(xs, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}
