//! `vit`: run, measure, convert and fine-tune Vision Transformers on Candle.
//!
//! The library is usable without the command line: [`hub::ModelSpec`] finds a model,
//! [`model::LoadedModel`] loads it, [`classifier::Classifier`] preprocesses images and ranks
//! classes.
//!
//! ```no_run
//! use vit::{classifier::{top_k, Classifier, ScoreFunction}, hub::ModelSpec, model};
//! # fn main() -> anyhow::Result<()> {
//! let files = ModelSpec::parse("google/vit-base-patch16-224", None)?.fetch()?;
//! let device = candle_core::Device::Cpu;
//! let options = model::LoadOptions {
//!     device: device.clone(),
//!     dtype: candle_core::DType::F32,
//!     num_heads: None,
//!     model: model::ModelOptions::default(),
//! };
//! let classifier = Classifier::new(model::LoadedModel::load(&files, &options)?, device, None)?;
//! let pixels = classifier.pixel_values("cat.jpg".as_ref())?;
//! let logits = classifier.logits(&[&pixels])?;
//! let scores = ScoreFunction::Softmax.apply(&logits[0]);
//! for p in top_k(&scores, &classifier.config.id2label, 5) {
//!     println!("{:.4} {}", p.score, p.label);
//! }
//! # Ok(()) }
//! ```

pub mod atomic;
pub mod bench;
pub mod classifier;
pub mod convert;
pub mod device;
pub mod embeddings;
pub mod explain;
pub mod fuzzing;
pub mod hub;
pub mod inputs;
pub mod kernels;
pub mod model;
pub mod panics;
pub mod preprocess;
pub mod quantize;
pub mod render;
pub mod serve;
pub mod tokenizer;
pub mod train;
pub mod zero_shot;

/// The error chain as `context: cause: cause`, each part cut at its first line (candle
/// appends a backtrace to its errors when `RUST_BACKTRACE` is set).
pub fn one_line(err: &anyhow::Error) -> String {
    err.chain()
        .map(|cause| {
            cause
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(": ")
}
