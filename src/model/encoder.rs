//! The Vision Transformer family as one configurable network, one struct per layer, after
//! timm's `VisionTransformer`: a [`Variant`] says which tokens, norms, layer scale, MLP,
//! pooling and head a checkpoint has.
//!
//! Tensor names are the canonical names of [`super::weights::expected_tensors`] (HF ViT's
//! layout, `vit.embeddings...`, `vit.encoder.layer.N...`, `vit.layernorm`, `classifier`, plus
//! the tensors other members add); each checkpoint layout is renamed onto them when it is
//! read (see [`super::layouts`]). The same code trains: built over weights that track
//! gradients (a `VarMap`'s), each op takes candle's ops with a backward pass wherever a tensor
//! tracks gradients, and the engine's fused kernels elsewhere.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::adapter::Adapter;
use super::attention::AttentionKernel;
use super::attention_pool::AttentionPool;
use super::config::{Activation, BlockConfig, Head, MlpKind, Pooling, PosInterpolation, ViTConfig};
use super::cpu_kernels;
use super::layers::{LayerNorm, Linear};
use super::posembed::{interpolate_patch_positions, Resampling};
use super::rope::{RotaryEmbedding, RotaryFrequencies, RotaryTables};
use crate::kernels::Isa;

/// Choices that change how the network computes, not what it computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelOptions {
    /// The attention kernel.
    pub attention: AttentionKernel,
    /// The CPU engine's instruction set for f32 inference (default: [`Isa::current`]).
    pub isa: Isa,
    /// Quantize the encoder's dense layers (attention's and the MLP's) to int8 per output
    /// channel as they load, their inputs per row as they run; the CPU in f32 only. The
    /// patch embedding, norms, attention itself and the head stay f32.
    pub int8: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            attention: AttentionKernel::Standard,
            isa: Isa::current(),
            int8: false,
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
        let bias = match cfg.variant.patch_bias {
            true => Some(vb.get(h, "bias")?),
            false => None,
        };
        Ok(Self {
            projection: Linear::new(weight, bias, options.isa)?,
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

/// The token sequence: class, distillation and register tokens, then the patch embeddings,
/// with position embeddings added where the variant has them.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// Class and distillation tokens, `(1, n, hidden)`, when there are any.
    class_tokens: Option<Tensor>,
    register_tokens: Option<Tensor>,
    /// Learned absolute positions, for the families that have them.
    position_embeddings: Option<Tensor>,
    patch_embeddings: PatchEmbeddings,
    /// Leading rows of `position_embeddings` for class tokens, then for registers.
    class_positions: usize,
    register_positions: usize,
    /// How positions are resized to another grid; `None`: they are not.
    resampling: Option<Resampling>,
    patch_size: usize,
    grid_size: usize,
}

impl Embeddings {
    pub fn new(vb: VarBuilder, cfg: &ViTConfig, options: ModelOptions) -> Result<Self> {
        let (h, variant) = (cfg.hidden_size, &cfg.variant);
        let mut class_tokens = Vec::new();
        if variant.class_token {
            class_tokens.push(vb.get((1, 1, h), "cls_token")?);
        }
        if variant.distillation_token {
            class_tokens.push(vb.get((1, 1, h), "distillation_token")?);
        }
        let class_tokens = match class_tokens.is_empty() {
            true => None,
            false => Some(Tensor::cat(&class_tokens, 1)?),
        };
        let register_tokens = match variant.register_tokens {
            0 => None,
            n => Some(vb.get((1, n, h), "register_tokens")?),
        };
        let class_positions = match variant.class_positions {
            true => variant.class_tokens(),
            false => 0,
        };
        let register_positions = match variant.register_positions {
            true => variant.register_tokens,
            false => 0,
        };
        let position_embeddings = match variant.absolute_positions {
            true => {
                let stored = vb.get((1, cfg.num_positions(), h), "position_embeddings")?;
                Some(match variant.class_token_last {
                    // The class token's row moves to the front, where `vit` puts the token.
                    true => {
                        let patches = cfg.num_positions() - 1;
                        Tensor::cat(
                            &[stored.narrow(1, patches, 1)?, stored.narrow(1, 0, patches)?],
                            1,
                        )?
                    }
                    false => stored,
                })
            }
            false => None,
        };
        Ok(Self {
            class_tokens,
            register_tokens,
            position_embeddings,
            patch_embeddings: PatchEmbeddings::new(vb.pp("patch_embeddings"), cfg, options)?,
            class_positions,
            register_positions,
            resampling: match variant.pos_interpolation {
                PosInterpolation::Bicubic => Some(Resampling::Bicubic),
                PosInterpolation::BicubicAntialias => Some(Resampling::BicubicAntialias),
                PosInterpolation::Fixed => None,
            },
            patch_size: cfg.patch_size,
            grid_size: cfg.grid_size(),
        })
    }

    /// The patch positions for a `rows` x `cols` grid: the stored ones at the config's grid,
    /// else resized as the checkpoint's library resizes them.
    fn patch_positions(&self, positions: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
        let prefix = self.class_positions + self.register_positions;
        let stored = positions.narrow(1, prefix, self.grid_size * self.grid_size)?;
        if (rows, cols) == (self.grid_size, self.grid_size) {
            return Ok(stored);
        }
        let Some(resampling) = self.resampling else {
            let side = self.grid_size * self.patch_size;
            candle_core::bail!(
                "the model runs at {side}x{side} only (its position embeddings are not \
                 resized), not at {}x{}",
                rows * self.patch_size,
                cols * self.patch_size
            );
        };
        interpolate_patch_positions(&stored, self.grid_size, (rows, cols), resampling)
    }

    /// The prefix tokens' rows `first..first + count` of the stored positions, when they
    /// have them.
    fn prefix_positions(&self, first: usize, count: usize) -> Result<Option<Tensor>> {
        match (&self.position_embeddings, count) {
            (Some(positions), 1..) => Ok(Some(positions.narrow(1, first, count)?)),
            _ => Ok(None),
        }
    }

    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, _, height, width) = pixel_values.dims4()?;
        let (rows, cols) = (height / self.patch_size, width / self.patch_size);
        let patches = self.patch_embeddings.forward(pixel_values)?;
        let patches = match &self.position_embeddings {
            Some(positions) => {
                patches.broadcast_add(&self.patch_positions(positions, rows, cols)?)?
            }
            None => patches,
        };
        let hidden = patches.dim(2)?;
        let mut parts = Vec::with_capacity(3);
        let prefix = [
            (&self.class_tokens, 0, self.class_positions),
            (
                &self.register_tokens,
                self.class_positions,
                self.register_positions,
            ),
        ];
        for (tokens, first, positioned) in prefix {
            let Some(tokens) = tokens else { continue };
            let tokens = match self.prefix_positions(first, positioned)? {
                Some(positions) => tokens.broadcast_add(&positions)?,
                None => tokens.clone(),
            };
            parts.push(tokens.broadcast_as((b, tokens.dim(1)?, hidden))?);
        }
        if parts.is_empty() {
            return Ok(patches);
        }
        parts.push(patches);
        Tensor::cat(&parts, 1)
    }
}

/// A dense layer whose output is scaled per channel by a layer scale, folded into its weight
/// and bias (`diag(s) W`, `s * b`) so that the fused products serve layer-scaled models.
fn load_scaled_linear(
    vb: VarBuilder,
    (in_dim, out_dim): (usize, usize),
    has_bias: bool,
    scale: Option<&Tensor>,
    options: ModelOptions,
) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = match has_bias {
        true => Some(vb.get(out_dim, "bias")?),
        false => None,
    };
    let (weight, bias) = match scale {
        None => (weight, bias),
        Some(scale) => (
            weight.broadcast_mul(&scale.reshape((out_dim, 1))?)?,
            bias.map(|bias| bias * scale).transpose()?,
        ),
    };
    encoder_linear(vec![weight], bias, options)
}

/// Dense layers stacked along their outputs into one product (query, key and value; a gated
/// MLP's gate and up projections), with the biases of those that have one and zeros for the
/// others, or no bias when none has one.
fn load_stacked_linear(
    vb: &VarBuilder,
    parts: &[(&str, bool)],
    (in_dim, out_dim): (usize, usize),
    options: ModelOptions,
) -> Result<Linear> {
    let mut weights = Vec::with_capacity(parts.len());
    let mut biases = Vec::with_capacity(parts.len());
    for &(name, has_bias) in parts {
        let vb = vb.pp(name);
        weights.push(vb.get((out_dim, in_dim), "weight")?);
        biases.push(match has_bias {
            true => vb.get(out_dim, "bias")?,
            false => Tensor::zeros(out_dim, vb.dtype(), vb.device())?,
        });
    }
    let bias = match parts.iter().any(|&(_, has_bias)| has_bias) {
        true => Some(Tensor::cat(&biases, 0)?),
        false => None,
    };
    encoder_linear(weights, bias, options)
}

/// An encoder's dense layer: int8 when `options` say so.
fn encoder_linear(
    parts: Vec<Tensor>,
    bias: Option<Tensor>,
    options: ModelOptions,
) -> Result<Linear> {
    match options.int8 {
        true => Linear::stacked_int8(parts, bias, options.isa),
        false => Linear::stacked(parts, bias, options.isa),
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
    isa: Isa,
}

impl SelfAttention {
    /// `vb` is HF's `attention` scope of one layer; `scale` a layer scale on its output.
    pub fn new(
        vb: VarBuilder,
        cfg: &BlockConfig,
        scale: Option<&Tensor>,
        options: ModelOptions,
    ) -> Result<Self> {
        let (h, biases) = (cfg.hidden_size, cfg.biases);
        let projections = [
            ("query", biases.query),
            ("key", biases.key),
            ("value", biases.value),
        ];
        let output = vb.pp("output").pp("dense");
        Ok(Self {
            qkv: load_stacked_linear(&vb.pp("attention"), &projections, (h, h), options)?,
            output: load_scaled_linear(output, (h, h), biases.output, scale, options)?,
            num_heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            kernel: options.attention,
            isa: options.isa,
        })
    }

    /// Attention over `xs`, plus `residual` (added by the output projection as it stores);
    /// `mask` (`(seq, seq)`, added to the scores) for a text tower's causal attention;
    /// `rotary`, the angles of the patch grid, turn the patches' queries and keys. With
    /// `probabilities`, the attention probabilities `(batch, heads, seq, seq)` are pushed
    /// onto it (standard attention, whatever the kernel).
    pub fn forward(
        &self,
        xs: &Tensor,
        residual: Option<&Tensor>,
        mask: Option<&Tensor>,
        rotary: Option<&RotaryTables>,
        probabilities: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let (b, s, h) = xs.dims3()?;
        let qkv = self
            .qkv
            .forward(xs)?
            .reshape((b, s, 3, self.num_heads, self.head_dim))?;
        let qkv = match rotary {
            Some(tables) => tables.rotate(qkv)?,
            None => qkv,
        };
        let context = match (probabilities, mask) {
            (Some(kept), mask) => {
                let (context, probs) =
                    super::attention::attention_with_probabilities(&qkv, mask, self.isa)?;
                kept.push(probs);
                context
            }
            (None, None) => self.kernel.attend(&qkv, self.isa)?,
            (None, Some(mask)) => super::attention::masked_attention(&qkv, Some(mask))?,
        };
        self.output
            .forward_fused(&context.reshape((b, s, h))?, None, residual)
    }
}

/// The feed-forward block of a layer: two dense layers with an activation between them, or
/// DINOv2's SwiGLU.
#[derive(Debug, Clone)]
pub struct Mlp {
    input: Linear,
    /// A layer norm on the hidden values (timm's `scale_mlp`).
    norm: Option<LayerNorm>,
    output: Linear,
    kind: MlpKind,
    activation: Activation,
}

impl Mlp {
    /// `vb` is the layer scope (HF ViT keeps `intermediate` and `output` side by side; the
    /// SwiGLU weights are `mlp.weights_in`, `mlp.weights_out`); `scale` a layer scale on the
    /// output.
    pub fn new(
        vb: VarBuilder,
        cfg: &BlockConfig,
        scale: Option<&Tensor>,
        options: ModelOptions,
    ) -> Result<Self> {
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.biases.mlp);
        let (input, output) = match cfg.mlp {
            MlpKind::Standard => (
                load_scaled_linear(
                    vb.pp("intermediate").pp("dense"),
                    (h, i),
                    bias,
                    None,
                    options,
                )?,
                vb.pp("output").pp("dense"),
            ),
            MlpKind::SwiGlu => (
                load_scaled_linear(
                    vb.pp("mlp").pp("weights_in"),
                    (h, 2 * i),
                    bias,
                    None,
                    options,
                )?,
                vb.pp("mlp").pp("weights_out"),
            ),
            MlpKind::Gated => (
                load_stacked_linear(
                    &vb.pp("intermediate"),
                    &[("gate", bias), ("dense", bias)],
                    (h, i),
                    options,
                )?,
                vb.pp("output").pp("dense"),
            ),
        };
        let norm = match cfg.mlp_norm {
            true => Some(LayerNorm::load(
                vb.pp("intermediate").pp("norm"),
                i,
                cfg.layer_norm_eps,
            )?),
            false => None,
        };
        Ok(Self {
            input,
            norm,
            output: load_scaled_linear(output, (i, h), bias, scale, options)?,
            kind: cfg.mlp,
            activation: cfg.hidden_act,
        })
    }

    /// The MLP over `xs`, plus `residual`: the activation and the residual are applied by
    /// the two products as they store (SwiGLU's gate is a separate pass).
    pub fn forward(&self, xs: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let hidden = match self.kind {
            MlpKind::Standard => self.input.forward_fused(xs, Some(self.activation), None)?,
            MlpKind::SwiGlu | MlpKind::Gated => {
                let both = self.input.forward(xs)?;
                let width = both.dim(D::Minus1)? / 2;
                let gate = both.narrow(D::Minus1, 0, width)?;
                let gate = match self.kind {
                    MlpKind::Gated => activate(&gate, self.activation)?,
                    _ => gate.silu()?,
                };
                (gate * both.narrow(D::Minus1, width, width)?)?
            }
        };
        let hidden = match &self.norm {
            Some(norm) => norm.forward(&hidden)?,
            None => hidden,
        };
        self.output.forward_fused(&hidden, None, residual)
    }
}

/// Applies an activation function (exact GELU by the engine's kernel where nothing tracks
/// gradients).
pub fn activate(xs: &Tensor, activation: Activation) -> Result<Tensor> {
    match activation {
        Activation::Gelu => cpu_kernels::gelu_erf(xs),
        Activation::GeluTanh => xs.gelu(),
        Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
        Activation::Relu => xs.relu(),
        Activation::Silu => xs.silu(),
    }
}

/// One pre-norm transformer block: `x + attn(ln(x))`, then `x + mlp(ln(x))`, each branch
/// scaled by its layer scale when the variant has one.
#[derive(Debug, Clone)]
pub struct Layer {
    layernorm_before: LayerNorm,
    attention: SelfAttention,
    layernorm_after: LayerNorm,
    mlp: Mlp,
}

impl Layer {
    pub fn new(vb: VarBuilder, cfg: &BlockConfig, options: ModelOptions) -> Result<Self> {
        let h = cfg.hidden_size;
        let norm = |name: &str| LayerNorm::load(vb.pp(name), h, cfg.layer_norm_eps);
        let scale = |name: &str| match cfg.layer_scale {
            true => vb.pp(name).get(h, "lambda1").map(Some),
            false => Ok(None),
        };
        let (attention_scale, mlp_scale) = (scale("layer_scale1")?, scale("layer_scale2")?);
        Ok(Self {
            layernorm_before: norm("layernorm_before")?,
            attention: SelfAttention::new(
                vb.pp("attention"),
                cfg,
                attention_scale.as_ref(),
                options,
            )?,
            layernorm_after: norm("layernorm_after")?,
            mlp: Mlp::new(vb.clone(), cfg, mlp_scale.as_ref(), options)?,
        })
    }

    /// The block over `xs`, with the patch grid's rotary angles for families that have them.
    pub fn forward(&self, xs: &Tensor, rotary: Option<&RotaryTables>) -> Result<Tensor> {
        self.forward_masked(xs, None, rotary, None)
    }

    /// The block with `mask` added to the attention scores, keeping the attention
    /// probabilities in `probabilities` when given (see [`SelfAttention::forward`]).
    pub fn forward_masked(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        rotary: Option<&RotaryTables>,
        probabilities: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let normed = self.layernorm_before.forward(xs)?;
        let xs = self
            .attention
            .forward(&normed, Some(xs), mask, rotary, probabilities)?;
        self.mlp
            .forward(&self.layernorm_after.forward(&xs)?, Some(&xs))
    }
}

/// The backbone: embeddings, optional pre-norm, blocks, final layer norm.
#[derive(Debug, Clone)]
pub struct Encoder {
    embeddings: Embeddings,
    /// Rotary position embeddings, turning queries and keys in every layer.
    rotary: Option<RotaryEmbedding>,
    /// RoPE-Mixed's learned frequencies, `(2, layers, heads, head_dim / 2)` row-major.
    mixed_frequencies: Option<Vec<f32>>,
    heads: usize,
    patch_size: usize,
    head_dim: usize,
    pre_layernorm: Option<LayerNorm>,
    layers: Vec<Layer>,
    layernorm: Option<LayerNorm>,
}

impl Encoder {
    pub fn new(vb: VarBuilder, cfg: &ViTConfig, options: ModelOptions) -> Result<Self> {
        let norm = |name: &str, present: bool| match present {
            true => LayerNorm::load(vb.pp(name), cfg.hidden_size, cfg.layer_norm_eps).map(Some),
            false => Ok(None),
        };
        let embeddings = Embeddings::new(vb.pp("embeddings"), cfg, options)?;
        let pre_layernorm = norm("pre_layernorm", cfg.variant.norm_pre)?;
        let block = cfg.block();
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(vb.pp("encoder").pp("layer").pp(i), &block, options))
            .collect::<Result<Vec<_>>>()?;
        let mixed_frequencies = match cfg.variant.rotary.map(|r| r.frequencies) {
            Some(RotaryFrequencies::Mixed) => {
                let shape = (
                    2,
                    cfg.num_hidden_layers,
                    cfg.num_attention_heads,
                    cfg.head_dim() / 2,
                );
                let frequencies = vb.pp("rope").get(shape, "freqs")?;
                Some(
                    frequencies
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                )
            }
            _ => None,
        };
        Ok(Self {
            embeddings,
            rotary: cfg.variant.rotary,
            mixed_frequencies,
            heads: cfg.num_attention_heads,
            patch_size: cfg.patch_size,
            head_dim: cfg.head_dim(),
            pre_layernorm,
            layers,
            layernorm: norm("layernorm", cfg.variant.final_norm)?,
        })
    }

    /// `(batch, channels, height, width)` to the tokens `(batch, prefix + patches, hidden)`
    /// after the final norm; with `attentions`, every layer's attention probabilities
    /// `(batch, heads, tokens, tokens)` pushed onto it, the first layer's first.
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        mut attentions: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let mut xs = self.embeddings.forward(pixel_values)?;
        let (_, _, height, width) = pixel_values.dims4()?;
        let grid = (height / self.patch_size, width / self.patch_size);
        let device = pixel_values.device();
        // One table for every layer, or, with learned frequencies, one per layer.
        let tables = match (self.rotary, &self.mixed_frequencies) {
            (None, _) => Vec::new(),
            (Some(rotary), None) => vec![rotary.tables(grid, self.head_dim, device)?],
            (Some(rotary), Some(frequencies)) => rotary.mixed_tables(
                grid,
                frequencies,
                (self.layers.len(), self.heads, self.head_dim),
                device,
            )?,
        };
        if let Some(norm) = &self.pre_layernorm {
            xs = norm.forward(&xs)?;
        }
        for (index, layer) in self.layers.iter().enumerate() {
            let rotary = tables.get(index).or(tables.first());
            xs = layer.forward_masked(&xs, None, rotary, attentions.as_deref_mut())?;
        }
        match &self.layernorm {
            Some(norm) => norm.forward(&xs),
            None => Ok(xs),
        }
    }
}

/// A forward pass with its attention probabilities ([`VisionTransformer::output_with_attentions`]).
#[derive(Debug, Clone)]
pub struct Attentions {
    /// The logits of a classifier, else the model's own embedding ([`EmbeddingKind::Auto`]).
    pub output: Tensor,
    /// Every layer's probabilities `(batch, heads, tokens, tokens)`, the first layer's first.
    pub layers: Vec<Tensor>,
    /// The attention pool's probe's probabilities `(batch, heads, tokens)`, for a model
    /// pooled by one (SigLIP).
    pub pool: Option<Tensor>,
}

/// The embedding [`VisionTransformer::embed`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingKind {
    /// The model's own pooled embedding (what its head reads).
    Auto,
    /// The class token after the final norm.
    Class,
    /// The mean of the patch tokens after the final norm.
    Mean,
    /// Every token after the final norm, `(batch, tokens, hidden)`.
    Tokens,
}

/// The classification head of a [`Head`].
#[derive(Debug, Clone)]
enum Classifier {
    None,
    Linear(Linear),
    Distilled { class: Linear, distillation: Linear },
}

/// A ViT-family model: the encoder, its pooling and its head.
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    encoder: Encoder,
    adapter: Option<Adapter>,
    attention_pool: Option<AttentionPool>,
    pool_layernorm: Option<LayerNorm>,
    projection: Option<Linear>,
    classifier: Classifier,
    pooling: Pooling,
    class_token: bool,
    /// Tokens before the patches (class, distillation, registers).
    prefix_tokens: usize,
    /// Patches per side at the config's size (the adapter's grid).
    grid_size: usize,
    dtype: DType,
}

impl VisionTransformer {
    pub fn new(vb: VarBuilder, cfg: &ViTConfig, options: ModelOptions) -> Result<Self> {
        if vb.device().is_cpu() {
            crate::kernels::keep_freed_memory();
        }
        let variant = &cfg.variant;
        let (h, labels) = (cfg.hidden_size, cfg.num_labels());
        let linear =
            |name: &str, width: usize| Linear::load(vb.pp(name), width, labels, options.isa);
        let classifier = match variant.head {
            Head::None => Classifier::None,
            Head::Linear => Classifier::Linear(linear("classifier", variant.pooled_width(h))?),
            Head::Distilled => Classifier::Distilled {
                class: linear("classifier", h)?,
                distillation: linear("distillation_classifier", h)?,
            },
        };
        let pool_layernorm = match variant.pool_norm {
            true => Some(LayerNorm::load(
                vb.pp("vit").pp("pool_layernorm"),
                variant.pooled_width(h),
                cfg.layer_norm_eps,
            )?),
            false => None,
        };
        let projection = match variant.projection {
            Some(width) => Some(Linear::new(
                vb.pp("projection")
                    .get((width, variant.pooled_width(h)), "weight")?,
                None,
                options.isa,
            )?),
            None => None,
        };
        let attention_pool = match variant.pooling {
            Pooling::AttentionPool => Some(AttentionPool::new(
                vb.pp("vit").pp("attention_pool"),
                &cfg.block(),
                options,
            )?),
            _ => None,
        };
        let adapter = match variant.adapter {
            Some(spec) => Some(Adapter::new(vb.pp("adapter"), spec, cfg, options.isa)?),
            None => None,
        };
        Ok(Self {
            encoder: Encoder::new(vb.pp("vit"), cfg, options)?,
            adapter,
            attention_pool,
            pool_layernorm,
            projection,
            classifier,
            pooling: variant.pooling,
            class_token: variant.class_token,
            prefix_tokens: variant.prefix_tokens(),
            grid_size: cfg.grid_size(),
            dtype: vb.dtype(),
        })
    }

    /// Every token after the final norm, `(batch, tokens, hidden)`.
    pub fn tokens(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.encoder
            .forward(&pixel_values.to_dtype(self.dtype)?, None)
    }

    /// The embedding `kind` of `tokens`: `(batch, width)`, or every token for
    /// [`EmbeddingKind::Tokens`] (the adapter's tokens for a model with one).
    pub fn pool(&self, tokens: &Tensor, kind: EmbeddingKind) -> Result<Tensor> {
        match kind {
            EmbeddingKind::Tokens => match self.adapter {
                Some(_) => self.patch_tokens(tokens),
                None => Ok(tokens.clone()),
            },
            EmbeddingKind::Class => self.class_token(tokens),
            EmbeddingKind::Mean => self.patch_mean(tokens),
            EmbeddingKind::Auto => self.own_embedding(tokens, None),
        }
    }

    /// The model's own embedding of `tokens` ([`EmbeddingKind::Auto`]), keeping an attention
    /// pool's probabilities in `pool_attention`.
    fn own_embedding(
        &self,
        tokens: &Tensor,
        pool_attention: Option<&mut Option<Tensor>>,
    ) -> Result<Tensor> {
        let pooled = self.pooled(tokens, pool_attention)?;
        match &self.projection {
            Some(projection) => projection.forward(&pooled),
            None => Ok(pooled),
        }
    }

    fn class_token(&self, tokens: &Tensor) -> Result<Tensor> {
        if !self.class_token {
            candle_core::bail!("the model has no class token (pool another way)");
        }
        tokens.narrow(1, 0, 1)?.squeeze(1)
    }

    /// The patch tokens the model gives out: the adapter's, for a model with one.
    fn patch_tokens(&self, tokens: &Tensor) -> Result<Tensor> {
        let patches = tokens.dim(1)? - self.prefix_tokens;
        let patches = tokens.narrow(1, self.prefix_tokens, patches)?;
        match &self.adapter {
            Some(adapter) => adapter.forward(&patches, (self.grid_size, self.grid_size)),
            None => Ok(patches),
        }
    }

    fn patch_mean(&self, tokens: &Tensor) -> Result<Tensor> {
        self.patch_tokens(tokens)?.mean(1)
    }

    /// What the head reads: the variant's pooling of `tokens`, then its pooled norm, keeping
    /// an attention pool's probabilities in `pool_attention`.
    fn pooled(
        &self,
        tokens: &Tensor,
        pool_attention: Option<&mut Option<Tensor>>,
    ) -> Result<Tensor> {
        let pooled = match self.pooling {
            Pooling::Class => self.class_token(tokens)?,
            Pooling::Mean => self.patch_mean(tokens)?,
            Pooling::ClassAndMean => {
                Tensor::cat(&[self.class_token(tokens)?, self.patch_mean(tokens)?], 1)?
            }
            Pooling::ClassDistillationAverage => {
                ((tokens.narrow(1, 0, 1)? + tokens.narrow(1, 1, 1)?)?.squeeze(1)? / 2.0)?
            }
            Pooling::AttentionPool => {
                let pool = self
                    .attention_pool
                    .as_ref()
                    .expect("built for attention pooling");
                let (pooled, probabilities) = pool.forward_with_probabilities(tokens)?;
                if let Some(kept) = pool_attention {
                    *kept = Some(probabilities);
                }
                pooled
            }
        };
        match &self.pool_layernorm {
            Some(norm) => norm.forward(&pooled),
            None => Ok(pooled),
        }
    }

    /// The embedding `kind` of images, in the model's dtype.
    pub fn embed(&self, pixel_values: &Tensor, kind: EmbeddingKind) -> Result<Tensor> {
        on_cpu_workers(pixel_values, || {
            self.pool(&self.tokens(pixel_values)?, kind)
        })
    }

    /// Whether the model has a classification head.
    pub fn has_head(&self) -> bool {
        !matches!(self.classifier, Classifier::None)
    }

    /// Classification logits `(batch, num_labels)`, in the model's dtype.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        on_cpu_workers(pixel_values, || {
            self.logits(&self.tokens(pixel_values)?, None)
        })
    }

    /// The head's logits of `tokens`, keeping an attention pool's probabilities in
    /// `pool_attention`.
    fn logits(
        &self,
        tokens: &Tensor,
        pool_attention: Option<&mut Option<Tensor>>,
    ) -> Result<Tensor> {
        match &self.classifier {
            Classifier::None => candle_core::bail!(
                "the model has no classification head (a backbone): use `vit embed`"
            ),
            Classifier::Linear(head) => head.forward(&self.pooled(tokens, pool_attention)?),
            Classifier::Distilled {
                class,
                distillation,
            } => {
                let class_logits = class.forward(&tokens.narrow(1, 0, 1)?.squeeze(1)?)?;
                let distilled = distillation.forward(&tokens.narrow(1, 1, 1)?.squeeze(1)?)?;
                (class_logits + distilled)? / 2.0
            }
        }
    }

    /// What [`Self::output`] computes, with the attention probabilities that led to it (for
    /// attention maps): standard attention keeping its probabilities in every layer.
    pub fn output_with_attentions(&self, pixel_values: &Tensor) -> Result<Attentions> {
        on_cpu_workers(pixel_values, || {
            let mut layers = Vec::new();
            let tokens = self
                .encoder
                .forward(&pixel_values.to_dtype(self.dtype)?, Some(&mut layers))?;
            let mut pool = None;
            let output = match self.has_head() {
                true => self.logits(&tokens, Some(&mut pool))?,
                false => self.own_embedding(&tokens, Some(&mut pool))?,
            };
            Ok(Attentions {
                output,
                layers,
                pool,
            })
        })
    }

    /// Tokens before the patches: class, distillation and register tokens.
    pub fn prefix_tokens(&self) -> usize {
        self.prefix_tokens
    }

    /// What the model computes: logits for a classifier, its own embedding
    /// ([`EmbeddingKind::Auto`]) for a backbone.
    pub fn output(&self, pixel_values: &Tensor) -> Result<Tensor> {
        match self.has_head() {
            true => self.forward(pixel_values),
            false => self.embed(pixel_values, EmbeddingKind::Auto),
        }
    }

    /// The dtype the weights are held in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

impl Module for VisionTransformer {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        VisionTransformer::forward(self, xs)
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

/// Numerically stable softmax over the last dimension, with a backward pass when `xs` tracks
/// gradients (candle's fused softmax has none).
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if xs.track_op() {
        candle_nn::ops::softmax(xs, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}
