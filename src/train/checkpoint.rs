//! Checkpoints: the model folders in `OUT_DIR` (the best model) and `OUT_DIR/last/` (the
//! latest, with the trainer state), written so that a run killed at any moment leaves a
//! complete checkpoint behind.
//!
//! `last/` is written whole into `OUT_DIR/.last.staging`, then swapped in with two renames:
//! `last` to `.last.previous`, `.last.staging` to `last`. A kill between the two leaves only
//! `.last.previous`, which [`recover_last`] moves back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::atomic::write_file;
use crate::model::save::{save_safetensors, stored_tensors, write_model_folder};
use crate::model::ViTConfig;
use crate::preprocess::{BackendRequest, PreprocessConfig};

/// The folder of the latest checkpoint, inside the output folder.
pub const LAST: &str = "last";
const STAGING: &str = ".last.staging";
const PREVIOUS: &str = ".last.previous";
/// The trainer state file inside `last/`.
pub const STATE_FILE: &str = "trainer_state.json";
/// The optimizer moments inside `last/`.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Per-epoch metrics, one JSON object a line, in the output folder.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The loss and accuracy curves, in the output folder.
pub const PLOT_FILE: &str = "metrics.png";
/// Everything a run writes in its output folder (what `--force` replaces).
pub const OUTPUTS: [&str; 8] = [
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    METRICS_FILE,
    PLOT_FILE,
    LAST,
    STAGING,
    PREVIOUS,
];

/// Everything that defines a run. Saved in the checkpoint; a resumed run keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The dataset folder.
    pub data: PathBuf,
    /// The base model (hub id, folder or file) or `preset:NAME`.
    pub base: String,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_ratio: f64,
    pub label_smoothing: f64,
    pub grad_accum: usize,
    /// Maximum global gradient norm; 0 disables clipping.
    pub clip_grad: f64,
    pub freeze_backbone: bool,
    pub image_size: usize,
    /// Smallest area of the random resized crop, as a fraction of the image.
    pub crop_scale: f64,
    pub val_split: f64,
    pub seed: u64,
    /// Also checkpoint every this many optimizer steps within an epoch (0: at epoch ends).
    pub save_steps: usize,
    /// The dtype the network computes in (`f32`, `f16`, `bf16`); weights stay f32.
    pub dtype: String,
    /// The image backend asked for (`--image-backend`; none: the model's own).
    #[serde(default)]
    pub image_backend: Option<BackendRequest>,
}

/// One epoch's results, as written to `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    /// Optimizer steps done by the end of the epoch.
    pub step: usize,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Mean training loss (with label smoothing) over the epoch's images.
    pub train_loss: f64,
    /// Top-1 accuracy on the augmented training images.
    pub train_accuracy: f64,
    /// Mean validation loss (with the same label smoothing, so the curves compare).
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_images: usize,
    /// Whether this epoch's model is the best so far (and so the one in the output folder):
    /// the highest validation accuracy, ties going to the lower validation loss.
    pub best: bool,
    /// Training images per second over the epoch's steps (decoding included).
    pub train_images_per_s: f64,
    /// Wall time of the epoch, training and validation, in seconds.
    pub epoch_seconds: f64,
}

/// Running sums of the epoch in progress (kept so that a mid-epoch resume reports the same
/// epoch metrics as an uninterrupted run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    pub loss_sum: f64,
    pub correct: usize,
    pub seen: usize,
    /// Seconds spent training in this epoch before the checkpoint.
    pub seconds: f64,
}

/// Where training stands: everything besides the weights and moments needed to continue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub settings: Settings,
    /// The class names, in label order.
    pub classes: Vec<String>,
    /// [`super::data::ImageFolder::fingerprint`] of the data trained on.
    pub data_fingerprint: String,
    /// Completed epochs.
    pub epoch: usize,
    /// Optimizer steps done within epoch `epoch` (0 at an epoch boundary).
    pub step_in_epoch: usize,
    /// Optimizer steps done in all.
    pub global_step: usize,
    /// The seed every random draw derives from (with the epoch and position).
    pub rng_seed: u64,
    /// The order of the training images in epoch `epoch` (indices into the training list).
    pub data_order: Vec<usize>,
    pub progress: EpochProgress,
    /// Best validation accuracy so far (ties go to the lower validation loss), its loss and
    /// its epoch (1-based; 0 before any).
    pub best_accuracy: f64,
    pub best_loss: f64,
    pub best_epoch: usize,
    pub history: Vec<EpochMetrics>,
    /// Images that could not be read, with the reason, in the order they were found.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// A model folder's contents: config, preprocessing and weights.
pub struct ModelFolder<'a> {
    pub config: &'a ViTConfig,
    pub base_config: Option<&'a Value>,
    pub preprocess: &'a PreprocessConfig,
    pub tensors: &'a HashMap<String, Tensor>,
}

/// Writes the best model into `out`, file by file, each atomically; the weights go last, so
/// a kill leaves the previous best or the new one, with matching config files.
pub fn write_best(out: &Path, model: &ModelFolder) -> Result<()> {
    let json = |value: &Value| {
        let mut text = serde_json::to_string_pretty(value).expect("JSON values serialize");
        text.push('\n');
        text
    };
    write_file(
        &out.join("config.json"),
        json(&model.config.to_hf_json(model.base_config)?).as_bytes(),
    )?;
    write_file(
        &out.join("preprocessor_config.json"),
        json(&model.preprocess.to_hf_json()).as_bytes(),
    )?;
    let weights = out.join("model.safetensors");
    let temporary = out.join(format!(".model.safetensors.tmp-{}", std::process::id()));
    save_safetensors(&temporary, &stored_tensors(model.config, model.tensors)?)?;
    std::fs::rename(&temporary, &weights)
        .with_context(|| format!("{}: cannot move into place", weights.display()))
}

/// Writes `last/`: the model folder, the optimizer moments and the trainer state.
pub fn write_last(
    out: &Path,
    model: &ModelFolder,
    moments: &HashMap<String, Tensor>,
    state: &TrainerState,
) -> Result<()> {
    let staging = out.join(STAGING);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("{}: cannot remove", staging.display()))?;
    }
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("{}: cannot create", staging.display()))?;
    write_model_folder(
        &staging,
        model.config,
        model.base_config,
        model.tensors,
        model.preprocess,
    )?;
    save_safetensors(&staging.join(OPTIMIZER_FILE), moments)?;
    let text = serde_json::to_string_pretty(state).context("cannot serialize trainer state")?;
    let state_path = staging.join(STATE_FILE);
    std::fs::write(&state_path, text)
        .with_context(|| format!("{}: cannot write", state_path.display()))?;
    let (last, previous) = (out.join(LAST), out.join(PREVIOUS));
    if previous.exists() {
        std::fs::remove_dir_all(&previous)
            .with_context(|| format!("{}: cannot remove", previous.display()))?;
    }
    if last.exists() {
        std::fs::rename(&last, &previous)
            .with_context(|| format!("{}: cannot move aside", last.display()))?;
    }
    std::fs::rename(&staging, &last)
        .with_context(|| format!("{}: cannot move into place", last.display()))?;
    if previous.exists() {
        std::fs::remove_dir_all(&previous)
            .with_context(|| format!("{}: cannot remove", previous.display()))?;
    }
    Ok(())
}

/// Makes `out/last` the latest complete checkpoint after a kill: moves `.last.previous` back
/// when the swap was interrupted, and drops an unfinished `.last.staging`. Returns the folder.
pub fn recover_last(out: &Path) -> Result<PathBuf> {
    let (last, previous, staging) = (out.join(LAST), out.join(PREVIOUS), out.join(STAGING));
    if !last.exists() && previous.exists() {
        std::fs::rename(&previous, &last)
            .with_context(|| format!("{}: cannot restore", previous.display()))?;
    }
    for leftover in [previous, staging] {
        if leftover.exists() {
            std::fs::remove_dir_all(&leftover)
                .with_context(|| format!("{}: cannot remove", leftover.display()))?;
        }
    }
    if !last.join(STATE_FILE).is_file() {
        bail!(
            "{}: no checkpoint to resume from (no {STATE_FILE})",
            last.display()
        );
    }
    Ok(last)
}

/// Reads the trainer state of a checkpoint folder.
pub fn read_state(last: &Path) -> Result<TrainerState> {
    let path = last.join(STATE_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a trainer state", path.display()))
}

/// Reads the optimizer moments of a checkpoint folder.
pub fn read_moments(last: &Path) -> Result<HashMap<String, Tensor>> {
    let path = last.join(OPTIMIZER_FILE);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))
}

/// Rewrites `metrics.jsonl` from the history, atomically.
pub fn write_metrics(out: &Path, history: &[EpochMetrics]) -> Result<()> {
    let mut text = String::new();
    for metrics in history {
        text.push_str(&serde_json::to_string(metrics).context("cannot serialize metrics")?);
        text.push('\n');
    }
    write_file(&out.join(METRICS_FILE), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_swap_is_recovered_and_leftovers_removed() {
        let out = tempfile::tempdir().unwrap();
        let previous = out.path().join(PREVIOUS);
        std::fs::create_dir(&previous).unwrap();
        std::fs::write(previous.join(STATE_FILE), "{}").unwrap();
        std::fs::create_dir(out.path().join(STAGING)).unwrap();
        let last = recover_last(out.path()).unwrap();
        assert!(last.join(STATE_FILE).is_file());
        assert!(!previous.exists() && !out.path().join(STAGING).exists());

        let empty = tempfile::tempdir().unwrap();
        let err = recover_last(empty.path()).unwrap_err().to_string();
        assert!(err.contains("no checkpoint to resume from"), "{err}");
    }
}
