//! The network, its configuration and its weights.

pub mod attention;
pub mod config;
pub mod cpu_kernels;
pub mod layers;
pub mod pickle;
pub mod posembed;
pub mod save;
pub mod vit;
pub mod weights;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

pub use attention::AttentionKernel;
pub use config::{Activation, ViTConfig};
pub use vit::{ModelOptions, ViTForImageClassification};
pub use weights::{ModelFiles, StateDict};

use crate::preprocess::PreprocessConfig;

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
    pub model: ViTForImageClassification,
    pub config: ViTConfig,
    pub preprocess: PreprocessConfig,
    /// Tensors in the checkpoint that the model does not use.
    pub unused_tensors: Vec<String>,
}

impl LoadedModel {
    /// Reads the config, weights and preprocessor config of `files` and builds the model.
    pub fn load(files: &ModelFiles, options: &LoadOptions) -> Result<Self> {
        let weights = weights::read_weights(&files.weights)?;
        let config = match &files.config {
            Some(path) => ViTConfig::from_file(path)?,
            None => weights::infer_config(&weights, options.num_heads)
                .with_context(|| format!("{}", files.weights.display()))?,
        };
        let preprocess = match &files.preprocessor {
            Some(path) => PreprocessConfig::from_file(path)?,
            None => PreprocessConfig::default(),
        };
        let unused_tensors = weights::check_state_dict(&weights, &config)
            .with_context(|| format!("{}", files.weights.display()))?;
        let model = build(weights, &config, options)
            .with_context(|| format!("{}", files.weights.display()))?;
        Ok(Self {
            model,
            config,
            preprocess,
            unused_tensors,
        })
    }
}

/// Builds the network from a checked state dict.
pub fn build(
    weights: StateDict,
    config: &ViTConfig,
    options: &LoadOptions,
) -> Result<ViTForImageClassification> {
    let vb = VarBuilder::from_tensors(weights, options.dtype, &options.device);
    Ok(ViTForImageClassification::new(vb, config, options.model)?)
}
