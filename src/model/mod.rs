//! The network ([`encoder`], its layers and kernels), its configuration, the checkpoint
//! formats ([`formats`]) and one loader per checkpoint layout between them ([`layouts`]).

pub mod adapter;
pub mod attention;
pub mod attention_pool;
pub mod config;
pub mod cpu_kernels;
pub mod encoder;
pub mod formats;
pub mod layers;
pub mod layouts;
pub mod posembed;
pub mod rope;
pub mod save;
pub mod text;

pub use formats::{mapped, pickle, weights};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use attention::AttentionKernel;
pub use config::{Activation, Head, Pooling, Variant, ViTConfig};
pub use encoder::{Attentions, EmbeddingKind, ModelOptions, VisionTransformer};
pub use layouts::Layout;
pub use weights::{ModelFiles, StateDict};

use crate::preprocess::PreprocessConfig;
use crate::tokenizer::TextTokenizer;
use text::{TextConfig, TextTransformer};

/// How to build a model from its files.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    /// Heads for a weights file without `config.json` (default: hidden size / 64).
    pub num_heads: Option<usize>,
    pub model: ModelOptions,
}

/// A model ready to run, with everything needed to feed it.
pub struct LoadedModel {
    pub model: VisionTransformer,
    pub config: ViTConfig,
    pub preprocess: PreprocessConfig,
    /// Tensors in the checkpoint that the model does not use.
    pub unused_tensors: Vec<String>,
    /// The checkpoint layout it was read from.
    pub layout: Layout,
    /// The text tower of an image-text model (CLIP).
    pub text: Option<TextTower>,
    /// How its weights are stored and run: see [`Int8Weights`].
    pub int8: Int8Weights,
}

/// Whether a model's dense layers are int8, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Weights {
    /// Float weights, run in the requested dtype.
    No,
    /// Quantized to int8 as the model loaded (`ModelOptions::int8`).
    QuantizedAtLoad,
    /// An int8 folder ([`crate::quantize`]), run as int8 on the CPU.
    Stored,
    /// An int8 folder whose weights were dequantized to the requested dtype: on a GPU, in
    /// half precision, or for training, where the int8 products do not run.
    Dequantized,
}

impl Int8Weights {
    /// Whether the dense layers run as int8 products.
    pub fn runs_int8(self) -> bool {
        matches!(self, Self::QuantizedAtLoad | Self::Stored)
    }
}

/// The text side of an image-text model: its tower, its tokenizer and the scale and bias of
/// its image-text logits.
pub struct TextTower {
    pub model: TextTransformer,
    pub config: TextConfig,
    /// The tokenizer, or why there is none.
    pub tokenizer: std::result::Result<TextTokenizer, String>,
    /// `exp(logit_scale)`: image-text logits are this times the cosine similarity...
    pub logit_scale: f32,
    /// ...plus this (SigLIP's `logit_bias`; 0 for CLIP).
    pub logit_bias: f32,
}

impl TextTower {
    /// The projected embeddings of `texts`, `(texts, projection_dim)`, in the model's dtype.
    pub fn embed(&self, texts: &[String]) -> Result<Tensor> {
        let tokenizer = self
            .tokenizer
            .as_ref()
            .map_err(|why| anyhow::anyhow!("{why}"))?;
        let rows = texts
            .iter()
            .map(|text| {
                let encoded = tokenizer.encode(text)?;
                self.model
                    .embed(&encoded.ids, encoded.attended)
                    .with_context(|| format!("text {text:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    }
}

impl LoadedModel {
    /// Reads the config, weights and preprocessor config of `files` and builds the model.
    /// Safetensors weights are read through a memory map, a tensor at a time (see
    /// [`mapped`]); PyTorch checkpoints are read whole.
    pub fn load(files: &ModelFiles, options: &LoadOptions) -> Result<Self> {
        let in_weights = || format!("{}", files.weights.display());
        let config_json = files.config.as_deref().map(read_json).transpose()?;
        let in_config = || format!("{}", files.config.as_ref().unwrap().display());
        let layout = match &config_json {
            Some(json) => Some(Layout::of_config(json).with_context(in_config)?),
            None => None,
        };
        let mut model_options = options.model;
        let (layout, mut weights) = match weights::is_safetensors(&files.weights) {
            true => {
                let mapped = mapped::MappedSafetensors::open(&files.weights, layout)?;
                (mapped.layout(), Weights::Mapped(mapped))
            }
            false => {
                let (layout, state) = weights::read_weights_in(&files.weights, layout)?;
                (layout, Weights::Loaded(state))
            }
        };
        let stored_int8 = matches!(&weights, Weights::Mapped(mapped) if mapped.has_int8());
        crate::quantize::check_config_entry(config_json.as_ref(), stored_int8).with_context(
            || {
                let config = files.config.as_ref();
                format!("{}", config.unwrap_or(&files.weights).display())
            },
        )?;
        let int8 = match (stored_int8, options.model.int8) {
            (false, false) => Int8Weights::No,
            (false, true) => Int8Weights::QuantizedAtLoad,
            (true, _) => {
                let runnable = options.device.is_cpu() && options.dtype == DType::F32;
                model_options.int8 = runnable;
                match runnable {
                    true => Int8Weights::Stored,
                    false => Int8Weights::Dequantized,
                }
            }
        };
        let shapes = weights.shapes();
        let no_config = serde_json::Value::Object(Default::default());
        let config = match (&config_json, layout) {
            (Some(json), _) => layout
                .config(json, shapes, options.num_heads)
                .with_context(in_config)?,
            (None, layout) if layout == Layout::TIMM => layout
                .config(&no_config, shapes, options.num_heads)
                .with_context(in_weights)?,
            (None, _) => {
                weights::infer_config(shapes, options.num_heads).with_context(in_weights)?
            }
        };
        let preprocess = match &files.preprocessor {
            Some(path) => PreprocessConfig::from_file(path)?,
            None => layout
                .default_preprocess(config_json.as_ref(), &config)
                .with_context(in_weights)?,
        };
        let text_config = match &config_json {
            Some(json) => layout.text_config(json).with_context(in_config)?,
            None => None,
        };
        let mut text_tensors = Vec::new();
        if let Some(text) = &text_config {
            weights::check_layers(shapes, "text.encoder.layer", text.num_hidden_layers)
                .with_context(in_weights)?;
            text_tensors = text.expected_tensors();
            text_tensors.extend(text.logit_tensors());
        }
        weights
            .adapt_to_config(layout, &config)
            .with_context(in_weights)?;
        let mut unused_tensors =
            weights::check_model_tensors(weights.shapes(), &config, &text_tensors)
                .with_context(in_weights)?;
        unused_tensors.retain(|name| !layout.unused_by_design(name, &config));
        let vb = match weights {
            Weights::Mapped(mapped) => {
                VarBuilder::from_backend(Box::new(mapped), options.dtype, options.device.clone())
            }
            Weights::Loaded(state) => {
                VarBuilder::from_tensors(state, options.dtype, &options.device)
            }
        };
        let text = match text_config {
            Some(text_config) => Some(
                TextTower::load(vb.clone(), text_config, files, options)
                    .with_context(in_weights)?,
            ),
            None => None,
        };
        let model = VisionTransformer::new(vb, &config, model_options).with_context(in_weights)?;
        Ok(Self {
            model,
            config,
            preprocess,
            unused_tensors,
            layout,
            text,
            int8,
        })
    }
}

impl TextTower {
    fn load(
        vb: VarBuilder,
        config: TextConfig,
        files: &ModelFiles,
        options: &LoadOptions,
    ) -> Result<Self> {
        let model = TextTransformer::new(vb.pp("text"), &config, options.model)?;
        let mut logits = std::collections::HashMap::new();
        for (name, shape) in config.logit_tensors() {
            let value = vb.get(shape, &name)?.to_dtype(DType::F32)?.flatten_all()?;
            logits.insert(name, value.to_vec1::<f32>()?[0]);
        }
        let logit_scale = logits["logit_scale"].exp();
        let logit_bias = logits.get("logit_bias").copied().unwrap_or(0.0);
        let tokenizer = match &files.tokenizer {
            Some(tokenizer_files) => Ok(TextTokenizer::load(
                tokenizer_files,
                config.max_position_embeddings,
                config.padded,
            )?),
            None => Err(format!(
                "{}: no tokenizer (tokenizer.json, vocab.json and merges.txt, or spiece.model) \
                 beside the model",
                files
                    .weights
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .display()
            )),
        };
        Ok(Self {
            model,
            config,
            tokenizer,
            logit_scale,
            logit_bias,
        })
    }
}

/// Reads a JSON file.
fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// A model's weights as read: mapped, or loaded whole.
enum Weights {
    Mapped(mapped::MappedSafetensors),
    Loaded(StateDict),
}

impl Weights {
    /// The weights as names and shapes.
    fn shapes(&self) -> &dyn weights::TensorShapes {
        match self {
            Self::Mapped(mapped) => mapped,
            Self::Loaded(state) => state,
        }
    }

    /// See [`weights::adapt_to_config`].
    fn adapt_to_config(&mut self, layout: Layout, config: &ViTConfig) -> Result<()> {
        match self {
            Self::Mapped(mapped) => weights::adapt_to_config(mapped, layout, config),
            Self::Loaded(state) => weights::adapt_to_config(state, layout, config),
        }
    }
}

/// Builds the network from a checked state dict.
pub fn build(
    weights: StateDict,
    config: &ViTConfig,
    options: &LoadOptions,
) -> Result<VisionTransformer> {
    let vb = VarBuilder::from_tensors(weights, options.dtype, &options.device);
    Ok(VisionTransformer::new(vb, config, options.model)?)
}
