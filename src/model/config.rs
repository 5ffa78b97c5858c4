//! The architecture of a ViT-family model: its sizes, the options that tell the family's
//! members apart ([`Variant`]), and the `config.json` of HF's plain ViT.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{Map, Value};

pub use super::rope::{RotaryCoordinates, RotaryEmbedding, RotaryFrequencies, RotaryPairs};

/// Activation of the MLP blocks, named as in HF's `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))` (HF `gelu`).
    Gelu,
    /// Tanh approximation of GELU (HF `gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// `x * sigmoid(1.702 x)` (HF `quick_gelu`).
    QuickGelu,
    /// `max(x, 0)`.
    Relu,
    /// `x * sigmoid(x)`.
    Silu,
}

impl Activation {
    /// Parses HF's `hidden_act` name.
    pub fn from_hf_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" | "gelu_python" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "quick_gelu" => Self::QuickGelu,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            other => bail!(
                "unsupported hidden_act {other:?} (supported: gelu, gelu_new, gelu_pytorch_tanh, quick_gelu, relu, silu)"
            ),
        })
    }

    /// The same function as the CPU engine applies it in a product's store.
    pub fn engine(self) -> crate::kernels::Activation {
        use crate::kernels::Activation as Engine;
        match self {
            Self::Gelu => Engine::Gelu,
            Self::GeluTanh => Engine::GeluTanh,
            Self::QuickGelu => Engine::QuickGelu,
            Self::Relu => Engine::Relu,
            Self::Silu => Engine::Silu,
        }
    }

    /// The canonical HF name written back to `config.json`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Gelu => "gelu",
            Self::GeluTanh => "gelu_pytorch_tanh",
            Self::QuickGelu => "quick_gelu",
            Self::Relu => "relu",
            Self::Silu => "silu",
        }
    }
}

/// What the model reads from its tokens: the embedding it pools, and the head on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The class token (HF ViT, DeiT, DINOv2; timm `global_pool='token'`).
    Class,
    /// The mean of the patch tokens, without class, distillation and register tokens (timm
    /// `global_pool='avg'`).
    Mean,
    /// The class token and the mean of the patch tokens, concatenated (HF
    /// `Dinov2ForImageClassification`).
    ClassAndMean,
    /// The mean of the class and distillation tokens (timm's distilled DeiT).
    ClassDistillationAverage,
    /// A learned query attending over all tokens, then a layer norm and an MLP with a
    /// residual (SigLIP's multihead attention pooling head, timm `global_pool='map'`).
    AttentionPool,
}

/// The feed-forward block of each layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpKind {
    /// `fc2(act(fc1(x)))`.
    Standard,
    /// `w_out(silu(x1) * x2)` with `[x1, x2] = w_in(x)` (DINOv2 `use_swiglu_ffn`); the
    /// config's `intermediate_size` is the width of `x1`.
    SwiGlu,
    /// `down(act(gate(x)) * up(x))` with the config's activation (HF DINOv3 `use_gated_mlp`,
    /// Llama's MLP): the standard MLP's dense layers are `up` and `down`, `gate` comes
    /// beside `up` and is merged with it into one product at load.
    Gated,
}

/// Which dense layers of a block have a bias. HF ViT's `qkv_bias` switches the three input
/// projections together; DINOv3 has a flag per projection (its key has none by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Biases {
    pub query: bool,
    pub key: bool,
    pub value: bool,
    /// The attention's output projection.
    pub output: bool,
    /// Both dense layers of the MLP (all three of a gated one).
    pub mlp: bool,
}

impl Biases {
    /// HF ViT's `qkv_bias`: the three input projections with or without a bias, the output
    /// projection and the MLP with one.
    pub fn with_qkv(qkv: bool) -> Self {
        Self {
            query: qkv,
            key: qkv,
            value: qkv,
            output: true,
            mlp: true,
        }
    }

    /// HF ViT's `qkv_bias`, when these biases are expressible by it.
    pub fn qkv(&self) -> Option<bool> {
        let same = self.query == self.key && self.key == self.value;
        (same && self.output && self.mlp).then_some(self.query)
    }

    /// Whether any of the query, key and value projections has a bias.
    pub fn any_qkv(&self) -> bool {
        self.query || self.key || self.value
    }
}

/// How position embeddings are resized for an input of another size than the stored grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PosInterpolation {
    /// Bicubic, `align_corners=False`, as HF ViT's and DeiT's `interpolate_pos_encoding`.
    Bicubic,
    /// Bicubic with antialiasing, as HF DINOv2 and timm's `resample_abs_pos_embed`.
    BicubicAntialias,
    /// Not resized: the model runs at its config's size only, as HF runs it (Llama 4, whose
    /// image processor cuts every image into tiles of that size).
    Fixed,
}

/// Llama 4's vision adapter on the patch tokens after the final norm: a pixel shuffle (each
/// `1/ratio` x `1/ratio` block of patches becomes one token, `1/ratio^2` times wider), then
/// `gelu(fc2(gelu(fc1(x))))` without biases (HF `Llama4VisionPixelShuffleMLP`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelShuffleAdapter {
    /// `pixel_shuffle_ratio`.
    pub ratio: f64,
    /// The width of `fc1`'s output (`projector_input_dim`).
    pub hidden: usize,
    /// The width of `fc2`'s output, each output token's (`projector_output_dim`).
    pub output: usize,
}

impl PixelShuffleAdapter {
    /// How many patches per side make one output token (`1 / ratio`).
    pub fn block(&self) -> usize {
        (1.0 / self.ratio).round() as usize
    }

    /// Checks that the shuffle divides a `grid` x `grid` grid of `width`-wide tokens and that
    /// `fc2` reads what `fc1` gives, as HF's modules need.
    pub fn check(&self, grid: usize, width: usize) -> Result<()> {
        let block = self.block();
        if !(self.ratio > 0.0 && self.ratio < 1.0) || (self.ratio * block as f64 - 1.0).abs() > 1e-9
        {
            bail!(
                "pixel_shuffle_ratio {} is not 1/n for an integer n > 1",
                self.ratio
            );
        }
        if !grid.is_multiple_of(block) {
            bail!(
                "pixel_shuffle_ratio {} does not divide the {grid}x{grid} patch grid",
                self.ratio
            );
        }
        if !width.is_multiple_of(block * block) {
            bail!(
                "pixel_shuffle_ratio {} does not divide hidden_size {width}",
                self.ratio
            );
        }
        if self.hidden != self.output {
            bail!(
                "projector_input_dim {} differs from projector_output_dim {} (HF's adapter \
                 feeds one into the other)",
                self.hidden,
                self.output
            );
        }
        require_positive(&[("projector_input_dim", self.hidden)])
    }

    /// The width of a shuffled token, `fc1`'s input.
    pub fn shuffled_width(&self, width: usize) -> usize {
        width * self.block() * self.block()
    }
}

/// The classification head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// A backbone: no labels, embeddings only.
    None,
    /// One linear layer on the pooled embedding.
    Linear,
    /// DeiT distilled: the mean of a head on the class token and one on the distillation
    /// token (HF `DeiTForImageClassificationWithTeacher`).
    Distilled,
}

/// The options that tell the members of the ViT family apart, after timm's
/// `VisionTransformer`. The default is HF's plain ViT with a classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Learned absolute position embeddings added to the tokens (all of the family but
    /// DINOv3).
    pub absolute_positions: bool,
    /// Rotary position embeddings applied to queries and keys in every attention (DINOv3).
    pub rotary: Option<RotaryEmbedding>,
    /// A class token first.
    pub class_token: bool,
    /// The checkpoint puts the class token after the patches (Llama 4): its position
    /// embedding is the stored table's last row. `vit` still puts it first: attention does
    /// not depend on the tokens' order, and what the model gives out does not contain it.
    pub class_token_last: bool,
    /// A distillation token after the class token (DeiT distilled).
    pub distillation_token: bool,
    /// Register tokens after the class and distillation tokens.
    pub register_tokens: usize,
    /// Whether position embeddings are added to the class and distillation tokens (else only
    /// the patches and, see below, the registers have them: timm `no_embed_class`).
    pub class_positions: bool,
    /// Whether position embeddings are added to the register tokens (timm with
    /// `no_embed_class=False`; HF DINOv2 inserts registers after adding positions).
    pub register_positions: bool,
    /// How position embeddings are resized to another input size.
    pub pos_interpolation: PosInterpolation,
    /// Whether the patch projection has a bias (CLIP's has none).
    pub patch_bias: bool,
    /// A layer norm on the tokens before the blocks (timm `norm_pre`).
    pub norm_pre: bool,
    /// Per-channel scales on each block's attention and MLP outputs (timm `ls1`/`ls2`, HF
    /// DINOv2 `layer_scale1`/`layer_scale2`), folded into the output projections at load.
    pub layer_scale: bool,
    /// The feed-forward block.
    pub mlp: MlpKind,
    /// A layer norm on the MLP's hidden values, before its output projection (timm's
    /// `scale_mlp`, EVA-02).
    pub mlp_norm: bool,
    /// A layer norm on all tokens after the blocks (else timm's `fc_norm`, below, or none).
    pub final_norm: bool,
    /// A layer norm on the pooled embedding (timm `fc_norm`, with average pooling).
    pub pool_norm: bool,
    /// The pooled embedding that the head reads and `embed --pool auto` gives.
    pub pooling: Pooling,
    /// The classification head.
    pub head: Head,
    /// A linear projection without bias of the pooled embedding to this width (CLIP's
    /// `visual_projection`): what `embed --pool auto` gives, comparable with text embeddings.
    pub projection: Option<usize>,
    /// Llama 4's pixel-shuffle adapter: the patch tokens the model gives out (`embed --pool
    /// tokens`, and their mean for `mean` and `auto`).
    pub adapter: Option<PixelShuffleAdapter>,
}

impl Default for Variant {
    fn default() -> Self {
        Self {
            absolute_positions: true,
            rotary: None,
            class_token: true,
            class_token_last: false,
            distillation_token: false,
            register_tokens: 0,
            class_positions: true,
            register_positions: false,
            pos_interpolation: PosInterpolation::Bicubic,
            patch_bias: true,
            norm_pre: false,
            layer_scale: false,
            mlp: MlpKind::Standard,
            mlp_norm: false,
            final_norm: true,
            pool_norm: false,
            pooling: Pooling::Class,
            head: Head::Linear,
            projection: None,
            adapter: None,
        }
    }
}

impl Variant {
    /// Class and distillation tokens, in front of the registers.
    pub fn class_tokens(&self) -> usize {
        usize::from(self.class_token) + usize::from(self.distillation_token)
    }

    /// Tokens in front of the patches: class, distillation and register tokens.
    pub fn prefix_tokens(&self) -> usize {
        self.class_tokens() + self.register_tokens
    }

    /// Prefix tokens that have a stored position embedding.
    pub fn positioned_prefix_tokens(&self) -> usize {
        let class = if self.class_positions {
            self.class_tokens()
        } else {
            0
        };
        let registers = if self.register_positions {
            self.register_tokens
        } else {
            0
        };
        class + registers
    }

    /// Whether this is HF's plain ViT (with or without its head), which every path of the
    /// project (training, conversion) covers.
    pub fn is_plain(&self) -> bool {
        let plain = Self::default();
        Self {
            head: plain.head,
            ..self.clone()
        } == plain
    }

    /// Width of the pooled embedding for a model `hidden` wide.
    pub fn pooled_width(&self, hidden: usize) -> usize {
        match self.pooling {
            Pooling::ClassAndMean => 2 * hidden,
            Pooling::Class
            | Pooling::Mean
            | Pooling::ClassDistillationAverage
            | Pooling::AttentionPool => hidden,
        }
    }

    /// Width of the model's own embedding (`embed --pool auto`): projected, adapted, or
    /// pooled.
    pub fn embedding_width(&self, hidden: usize) -> usize {
        match self.adapter {
            Some(adapter) => adapter.output,
            None => self.projection.unwrap_or(self.pooled_width(hidden)),
        }
    }
}

/// The sizes and options of one transformer block, shared by the image and text towers.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub biases: Biases,
    /// Per-channel scales on the attention and MLP outputs.
    pub layer_scale: bool,
    pub mlp: MlpKind,
    /// A layer norm on the MLP's hidden values (see [`Variant::mlp_norm`]).
    pub mlp_norm: bool,
}

impl BlockConfig {
    /// Checks that the heads divide the width.
    pub fn check_heads(&self) -> Result<()> {
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        Ok(())
    }
}

/// Fails naming the first of `sizes` that is zero.
/// Refuses a layer norm's eps that is not a small positive number (real checkpoints use
/// 1e-12 to 1e-5): -1 or NaN give NaN outputs, 1e30 erases the normalization.
pub(crate) fn check_eps(eps: f64) -> Result<()> {
    if !(eps > 0.0 && eps < 1.0) {
        bail!("layer_norm_eps {eps} is not in (0, 1)");
    }
    Ok(())
}

pub(crate) fn require_positive(sizes: &[(&str, usize)]) -> Result<()> {
    match sizes.iter().find(|(_, value)| *value == 0) {
        Some((key, _)) => bail!("{key} must be positive"),
        None => Ok(()),
    }
}

/// The architecture of a ViT-family model, with HF's defaults for missing keys.
#[derive(Debug, Clone, PartialEq)]
pub struct ViTConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    /// Which dense layers have a bias.
    pub biases: Biases,
    /// Class names by index; its length is the number of labels (empty without a head).
    pub id2label: Vec<String>,
    /// The family member: tokens, norms, layer scale, MLP, pooling, head.
    pub variant: Variant,
}

/// The keys of `config.json` that we read; everything else is kept as is when rewriting.
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default = "default_hidden_size")]
    hidden_size: usize,
    #[serde(default = "default_layers")]
    num_hidden_layers: usize,
    #[serde(default = "default_heads")]
    num_attention_heads: usize,
    #[serde(default = "default_intermediate")]
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_image_size")]
    image_size: SizeValue,
    #[serde(default = "default_patch_size")]
    patch_size: SizeValue,
    #[serde(default = "default_channels")]
    num_channels: usize,
    #[serde(default = "default_true")]
    qkv_bias: bool,
    #[serde(default)]
    id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    num_labels: Option<usize>,
}

/// HF allows `image_size`/`patch_size` as an int or a `[h, w]` pair.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Square(usize),
    Pair([usize; 2]),
}

fn default_hidden_size() -> usize {
    768
}
fn default_layers() -> usize {
    12
}
fn default_heads() -> usize {
    12
}
fn default_intermediate() -> usize {
    3072
}
fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_image_size() -> SizeValue {
    SizeValue::Square(224)
}
fn default_patch_size() -> SizeValue {
    SizeValue::Square(16)
}
fn default_channels() -> usize {
    3
}
fn default_true() -> bool {
    true
}

impl SizeValue {
    fn square(&self, key: &str) -> Result<usize> {
        match *self {
            Self::Square(n) => Ok(n),
            Self::Pair([h, w]) if h == w => Ok(h),
            Self::Pair([h, w]) => bail!("non-square {key} [{h}, {w}] is not supported"),
        }
    }
}

impl ViTConfig {
    /// Reads and checks a `config.json` of any layout that `vit` reads
    /// ([`super::layouts::Layout`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        Self::from_json(&text).with_context(|| format!("{}", path.display()))
    }

    /// Parses `config.json` text of any layout, filling its library's defaults.
    pub fn from_json(text: &str) -> Result<Self> {
        let json: Value = serde_json::from_str(text).context("invalid config.json")?;
        let layout = super::layouts::Layout::of_config(&json)?;
        if layout == super::layouts::Layout::TIMM {
            bail!("a timm config.json describes its model through its weights: load the folder");
        }
        let no_tensors = super::weights::StateDict::new();
        layout.config(&json, &no_tensors, None)
    }

    /// The sizes of an HF ViT-style `config.json` (HF ViT's keys and defaults, which DeiT and,
    /// with its own defaults filled in, DINOv2 share) and the plain variant; `id2label` is
    /// empty when the config names no labels. Not validated: the layouts finish it.
    pub(crate) fn from_value(json: &Value) -> Result<Self> {
        let raw = RawConfig::deserialize(json).context("invalid config.json")?;
        let id2label = match (raw.id2label, raw.num_labels) {
            (Some(map), _) => labels_from_map(&map)?,
            (None, Some(n)) => generic_labels(n),
            (None, None) => Vec::new(),
        };
        Ok(Self {
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            hidden_act: Activation::from_hf_name(&raw.hidden_act)?,
            layer_norm_eps: raw.layer_norm_eps,
            image_size: raw.image_size.square("image_size")?,
            patch_size: raw.patch_size.square("patch_size")?,
            num_channels: raw.num_channels,
            biases: Biases::with_qkv(raw.qkv_bias),
            id2label,
            variant: Variant::default(),
        })
    }

    /// Checks the invariants the network relies on.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("num_channels", self.num_channels),
        ];
        require_positive(&positive)?;
        check_eps(self.layer_norm_eps)?;
        self.block().check_heads()?;
        match (self.variant.head, self.id2label.len()) {
            (Head::None, 0) => {}
            (Head::None, n) => bail!("a model without a head has {n} labels"),
            (_, 0) => bail!("num_labels must be positive"),
            _ => {}
        }
        if self.variant.distillation_token && !self.variant.class_token {
            bail!("a distillation token needs a class token");
        }
        let needs_class = matches!(self.variant.pooling, Pooling::Class | Pooling::ClassAndMean);
        if needs_class && !self.variant.class_token {
            bail!("class-token pooling without a class token");
        }
        let needs_distillation = self.variant.pooling == Pooling::ClassDistillationAverage;
        if needs_distillation && !self.variant.distillation_token {
            bail!("distillation-token pooling without a distillation token");
        }
        if self.variant.head == Head::Distilled && !self.variant.distillation_token {
            bail!("a distilled head without a distillation token");
        }
        if let Some(rotary) = &self.variant.rotary {
            rotary.check(self.head_dim())?;
        }
        if let Some(adapter) = &self.variant.adapter {
            adapter.check(self.grid_size(), self.hidden_size)?;
        }
        if self.image_size < self.patch_size {
            bail!(
                "image_size {} is smaller than patch_size {}",
                self.image_size,
                self.patch_size
            );
        }
        Ok(())
    }

    /// The configuration of each block.
    pub fn block(&self) -> BlockConfig {
        BlockConfig {
            hidden_size: self.hidden_size,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
            biases: self.biases,
            layer_scale: self.variant.layer_scale,
            mlp: self.variant.mlp,
            mlp_norm: self.variant.mlp_norm,
        }
    }

    /// Number of output classes.
    pub fn num_labels(&self) -> usize {
        self.id2label.len()
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Patches per side at the config's image size.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Rows of the stored position embeddings: the patch grid and the prefix tokens that
    /// have one.
    pub fn num_positions(&self) -> usize {
        self.grid_size() * self.grid_size() + self.variant.positioned_prefix_tokens()
    }

    /// Whether the model has a classification head.
    pub fn has_head(&self) -> bool {
        self.variant.head != Head::None
    }

    /// The HF `config.json` for this architecture in its layout
    /// ([`super::layouts::Layout::of_variant`]), on top of `base` (an existing config whose
    /// other keys are kept) or a fresh one.
    pub fn to_hf_json(&self, base: Option<&Value>) -> Result<Value> {
        let layout = super::layouts::Layout::of_variant(&self.variant)?;
        Ok(layout.hf_config(self, base))
    }

    /// The keys every HF layout of the family writes the same way (labels only with a head).
    pub(crate) fn common_hf_entries(&self) -> Vec<(&'static str, Value)> {
        let mut entries = vec![
            ("hidden_size", Value::from(self.hidden_size)),
            ("num_hidden_layers", Value::from(self.num_hidden_layers)),
            ("num_attention_heads", Value::from(self.num_attention_heads)),
            ("hidden_act", Value::from(self.hidden_act.hf_name())),
            ("layer_norm_eps", Value::from(self.layer_norm_eps)),
            ("image_size", Value::from(self.image_size)),
            ("patch_size", Value::from(self.patch_size)),
            ("num_channels", Value::from(self.num_channels)),
        ];
        if let Some(qkv) = self.biases.qkv() {
            entries.push(("qkv_bias", Value::from(qkv)));
        }
        if self.has_head() {
            let id2label: Map<String, Value> = self
                .id2label
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), Value::from(l.as_str())))
                .collect();
            let label2id: Map<String, Value> = self
                .id2label
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), Value::from(i)))
                .collect();
            entries.push(("id2label", Value::Object(id2label)));
            entries.push(("label2id", Value::Object(label2id)));
        }
        entries
    }
}

/// HF's placeholder names, `LABEL_0`, `LABEL_1`, ...
pub fn generic_labels(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("LABEL_{i}")).collect()
}

fn labels_from_map(map: &BTreeMap<String, String>) -> Result<Vec<String>> {
    let mut labels = vec![None; map.len()];
    for (key, label) in map {
        let index: usize = key
            .parse()
            .with_context(|| format!("id2label key {key:?} is not an integer"))?;
        let slot = labels
            .get_mut(index)
            .with_context(|| format!("id2label has {} entries but key {index}", map.len()))?;
        *slot = Some(label.clone());
    }
    Ok(labels.into_iter().map(|l| l.unwrap_or_default()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_keys_get_hf_defaults() {
        let config = ViTConfig::from_json("{}").unwrap();
        assert_eq!(config.hidden_size, 768);
        assert_eq!(config.num_hidden_layers, 12);
        assert_eq!(config.hidden_act, Activation::Gelu);
        assert_eq!(config.layer_norm_eps, 1e-12);
        assert_eq!(config.biases, Biases::with_qkv(true));
        assert_eq!(config.id2label, vec!["LABEL_0", "LABEL_1"]);
    }

    #[test]
    fn id2label_is_ordered_by_index() {
        let json = r#"{"id2label": {"10": "k", "2": "c", "0": "a", "1": "b", "3": "d", "4": "e",
            "5": "f", "6": "g", "7": "h", "8": "i", "9": "j"}}"#;
        let config = ViTConfig::from_json(json).unwrap();
        assert_eq!(config.id2label[2], "c");
        assert_eq!(config.id2label[10], "k");
    }

    #[test]
    fn num_labels_without_names_gives_generic_names() {
        let config = ViTConfig::from_json(r#"{"num_labels": 3}"#).unwrap();
        assert_eq!(config.id2label, vec!["LABEL_0", "LABEL_1", "LABEL_2"]);
    }

    #[test]
    fn bad_configs_are_refused_with_the_key() {
        let err = ViTConfig::from_json(r#"{"hidden_act": "mish"}"#).unwrap_err();
        assert!(format!("{err:#}").contains("mish"));
        let err =
            ViTConfig::from_json(r#"{"hidden_size": 100, "num_attention_heads": 3}"#).unwrap_err();
        assert!(format!("{err:#}").contains("num_attention_heads"));
        let err = ViTConfig::from_json(r#"{"id2label": {"x": "a"}}"#).unwrap_err();
        assert!(format!("{err:#}").contains("\"x\""));
    }

    #[test]
    fn round_trips_through_hf_json() {
        let config = ViTConfig::from_json(
            r#"{"hidden_size": 64, "num_attention_heads": 4, "hidden_act": "quick_gelu",
                "qkv_bias": false, "num_labels": 5, "layer_norm_eps": 1e-6}"#,
        )
        .unwrap();
        let json = config.to_hf_json(None).unwrap().to_string();
        assert_eq!(ViTConfig::from_json(&json).unwrap(), config);
    }
}
