//! Fine-tuning and training from scratch: the loop behind `vit finetune`.
//!
//! Every trained parameter is a candle [`Var`](candle_core::Var) holding f32 master weights;
//! each step builds the network over them ([`model::Weights::network`], with the
//! differentiable layer norm and softmax), runs the label-smoothed loss backward, accumulates
//! gradients over `grad_accum` batches, clips them by global norm and applies AdamW with a
//! warmup-then-cosine learning rate.
//!
//! Runs are reproducible: the data order and each image's augmentation derive from the seed,
//! the epoch and the position ([`rng`]), so a run resumed from `last/` (at an epoch end, or
//! mid-epoch with `save_steps`) finishes with the same weights as an uninterrupted one on the
//! same machine (CPU, same thread count).

pub mod augment;
pub mod checkpoint;
pub mod cpu_step;
pub mod data;
#[cfg(test)]
mod gradcheck;
pub mod model;
pub mod optim;
pub mod plot;
pub mod rng;

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use serde_json::Value;

use crate::model::weights::read_weights_as;
use crate::model::ViTConfig;
use crate::preprocess::{load_rgb, PreprocessConfig};
use augment::Augment;
pub use checkpoint::{EpochMetrics, Settings, TrainerState};
use checkpoint::{EpochProgress, ModelFolder};
use data::{epoch_order, ImageFolder, Prefetch, Prepare, Sample, Unreadable};
use model::Weights;
use optim::{clip_factor, cross_entropy, learning_rate, AdamW, AdamWConfig};
use rng::{Rng, Stream};

/// Hears about training as it goes (the command line draws a progress bar).
pub trait Observer {
    /// Epoch `epoch` (0-based) of `epochs` starts, with `done` of its `steps` optimizer steps
    /// already done (a mid-epoch resume).
    fn epoch_start(&mut self, epoch: usize, epochs: usize, steps: usize, done: usize);
    /// An optimizer step finished.
    fn step(&mut self, report: &StepReport);
    /// An epoch finished and was evaluated.
    fn epoch_end(&mut self, metrics: &EpochMetrics);
    /// Something went wrong but training goes on (an unreadable image).
    fn warn(&mut self, message: &str);
}

/// Progress after one optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub global_step: usize,
    pub step_in_epoch: usize,
    /// Mean training loss of the epoch so far.
    pub loss: f64,
    pub lr: f64,
    /// Training images per second in this epoch so far.
    pub images_per_s: f64,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub best_accuracy: f64,
    /// 1-based.
    pub best_epoch: usize,
    pub epochs: usize,
    pub last: Option<EpochMetrics>,
    /// Images that could not be read (left out).
    pub unreadable: usize,
}

/// The model a new run starts from.
pub struct Start {
    /// The architecture, already sized to the classes and input size.
    pub config: ViTConfig,
    /// The base's `config.json`, whose other keys are kept in the saved configs.
    pub base_config: Option<Value>,
    /// The evaluation preprocessing (saved as `preprocessor_config.json`).
    pub preprocess: PreprocessConfig,
    /// Every tensor of `config`.
    pub weights: crate::model::StateDict,
}

/// The preprocessing `preprocess` would do, adjusted to produce `size` x `size` inputs for
/// every image (so that validation images batch together).
pub fn eval_preprocess(preprocess: &PreprocessConfig, size: u32) -> PreprocessConfig {
    let fixed = [(640, 480), (480, 640), (size, size)]
        .iter()
        .all(|&(w, h)| preprocess.output_size(w, h) == (size, size));
    match fixed {
        true => preprocess.clone(),
        false => preprocess.with_input_size(size),
    }
}

/// Parses a dtype name as saved in [`Settings::dtype`].
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => bail!("unsupported training dtype {other:?} (f32, f16 or bf16)"),
    }
}

/// A run in progress: data, weights, optimizer, state and where it all goes.
pub struct Trainer {
    settings: Settings,
    out: PathBuf,
    train: Arc<Vec<Sample>>,
    val: Arc<Vec<Sample>>,
    weights: Weights,
    optimizer: AdamW,
    state: TrainerState,
    base_config: Option<Value>,
    preprocess: PreprocessConfig,
    warned: HashSet<PathBuf>,
}

impl Trainer {
    /// A new run of `settings` on `data` from `start`, writing into `out` (which must exist).
    /// `unreadable` lists the images already left out of `data`.
    pub fn new(
        settings: Settings,
        out: &Path,
        data: ImageFolder,
        start: Start,
        device: &Device,
        unreadable: Vec<Unreadable>,
    ) -> Result<Self> {
        check_data(&data)?;
        let dtype = parse_dtype(&settings.dtype)?;
        let weights = Weights::new(
            start.config,
            start.weights,
            settings.freeze_backbone,
            dtype,
            device,
        )?;
        let optimizer = AdamW::new(
            weights.trainable.clone(),
            AdamWConfig::with_weight_decay(settings.weight_decay),
        )?;
        let state = TrainerState {
            classes: data.classes.clone(),
            data_fingerprint: data.fingerprint(),
            epoch: 0,
            step_in_epoch: 0,
            global_step: 0,
            rng_seed: settings.seed,
            data_order: epoch_order(data.train.len(), settings.seed, 0),
            progress: EpochProgress::default(),
            best_accuracy: 0.0,
            best_loss: 0.0,
            best_epoch: 0,
            history: Vec::new(),
            unreadable: Vec::new(),
            settings: settings.clone(),
        };
        let mut trainer = Self {
            settings,
            out: out.to_path_buf(),
            train: Arc::new(data.train),
            val: Arc::new(data.val),
            weights,
            optimizer,
            state,
            base_config: start.base_config,
            preprocess: start.preprocess,
            warned: HashSet::new(),
        };
        trainer.state.unreadable = unreadable.into_iter().map(|u| (u.path, u.reason)).collect();
        Ok(trainer)
    }

    /// Continues the run checkpointed in `out/last/` on `data` (which must be the same images).
    pub fn resume(out: &Path, data: ImageFolder, device: &Device) -> Result<Self> {
        let last = checkpoint::recover_last(out)?;
        let state = checkpoint::read_state(&last)?;
        check_data(&data)?;
        if data.fingerprint() != state.data_fingerprint || data.classes != state.classes {
            bail!(
                "{}: the images differ from those the checkpoint was trained on",
                data.root.display()
            );
        }
        let config = ViTConfig::from_file(&last.join("config.json"))?;
        let base_config: Value = serde_json::from_str(
            &std::fs::read_to_string(last.join("config.json"))
                .with_context(|| format!("{}: cannot read config.json", last.display()))?,
        )
        .with_context(|| format!("{}: invalid config.json", last.display()))?;
        let preprocess = PreprocessConfig::from_file(&last.join("preprocessor_config.json"))?
            .on_backend(state.settings.image_backend)?;
        let layout = crate::model::Layout::of_config(&base_config)?;
        let tensors = read_weights_as(&last.join("model.safetensors"), Some(layout))?;
        let settings = state.settings.clone();
        let dtype = parse_dtype(&settings.dtype)?;
        let weights = Weights::new(config, tensors, settings.freeze_backbone, dtype, device)
            .with_context(|| format!("{}", last.display()))?;
        let mut optimizer = AdamW::new(
            weights.trainable.clone(),
            AdamWConfig::with_weight_decay(settings.weight_decay),
        )?;
        let mut moments = checkpoint::read_moments(&last)?;
        for p in &mut optimizer.params {
            for (prefix, slot) in [("exp_avg.", &mut p.m), ("exp_avg_sq.", &mut p.v)] {
                let name = format!("{prefix}{}", p.name);
                let saved = moments.remove(&name).with_context(|| {
                    format!(
                        "{}: missing tensor {name}",
                        last.join("optimizer").display()
                    )
                })?;
                *slot = saved.to_device(device)?;
            }
        }
        optimizer.steps = state.global_step as u64;
        Ok(Self {
            settings,
            out: out.to_path_buf(),
            train: Arc::new(data.train),
            val: Arc::new(data.val),
            weights,
            optimizer,
            state,
            base_config: Some(base_config),
            preprocess,
            warned: HashSet::new(),
        })
    }

    /// The settings of the run (saved ones, for a resumed run).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Where training stands.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// Optimizer steps per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        let batches = self.train.len().div_ceil(self.settings.batch_size);
        batches.div_ceil(self.settings.grad_accum)
    }

    /// Trains the remaining epochs, checkpointing as it goes.
    pub fn run(&mut self, observer: &mut dyn Observer) -> Result<Summary> {
        for (path, reason) in &self.state.unreadable {
            if self.warned.insert(path.clone()) {
                observer.warn(&format!("{}: {reason} (skipped)", path.display()));
            }
        }
        self.write_reports()?;
        while self.state.epoch < self.settings.epochs {
            self.train_epoch(observer)?;
        }
        Ok(Summary {
            best_accuracy: self.state.best_accuracy,
            best_epoch: self.state.best_epoch,
            epochs: self.state.epoch,
            last: self.state.history.last().cloned(),
            unreadable: self.state.unreadable.len(),
        })
    }

    fn train_epoch(&mut self, observer: &mut dyn Observer) -> Result<()> {
        let s = &self.settings;
        let (epoch, bs, accum) = (self.state.epoch, s.batch_size, s.grad_accum);
        let n = self.train.len();
        let steps = self.steps_per_epoch();
        let total = steps * s.epochs;
        let warmup = (s.warmup_ratio * total as f64).ceil() as usize;
        let micro_batches = n.div_ceil(bs);
        observer.epoch_start(epoch, s.epochs, steps, self.state.step_in_epoch);
        let clock = Instant::now();
        let seconds_before = self.state.progress.seconds;
        let start = self.state.step_in_epoch * accum * bs;
        let loader = Prefetch::start(
            self.train.clone(),
            self.state.data_order.clone(),
            start,
            bs,
            self.prepare_train(epoch),
        );
        let mut grads: Option<HashMap<String, Tensor>> = None;
        let mut lr = learning_rate(s.lr, self.state.global_step, warmup, total);
        for (i, mut batch) in loader.enumerate() {
            let micro = start / bs + i;
            let group = micro / accum;
            let group_end = ((group + 1) * accum).min(micro_batches) - 1;
            let normalizer = ((group + 1) * accum * bs).min(n) - group * accum * bs;
            self.record_unreadable(std::mem::take(&mut batch.failed), observer);
            if !batch.is_empty() {
                let step = self.forward_backward(batch, normalizer)?;
                grads = Some(match grads.take() {
                    None => step.grads,
                    Some(mut sum) => {
                        for (name, g) in step.grads {
                            let total = (&sum[&name] + g)?;
                            sum.insert(name, total);
                        }
                        sum
                    }
                });
                let p = &mut self.state.progress;
                p.loss_sum += step.loss_sum;
                p.correct += step.correct;
                p.seen += step.images;
            }
            if micro != group_end {
                continue;
            }
            lr = learning_rate(self.settings.lr, self.state.global_step, warmup, total);
            if let Some(mut sum) = grads.take() {
                let (_, factor) = clip_factor(&sum, self.settings.clip_grad)?;
                if factor < 1.0 {
                    for g in sum.values_mut() {
                        *g = (&*g * factor)?;
                    }
                }
                self.optimizer.step(&sum, lr)?;
            }
            self.state.global_step += 1;
            self.state.step_in_epoch += 1;
            let seconds = seconds_before + clock.elapsed().as_secs_f64();
            let p = &self.state.progress;
            observer.step(&StepReport {
                global_step: self.state.global_step,
                step_in_epoch: self.state.step_in_epoch,
                loss: p.loss_sum / p.seen.max(1) as f64,
                lr,
                images_per_s: p.seen as f64 / seconds.max(1e-9),
            });
            let save_steps = self.settings.save_steps;
            if save_steps > 0
                && self.state.global_step.is_multiple_of(save_steps)
                && self.state.step_in_epoch < steps
            {
                self.state.progress.seconds = seconds;
                self.save_last()?;
            }
        }
        let train_seconds = seconds_before + clock.elapsed().as_secs_f64();
        let (val_loss, val_accuracy, val_images) = self.evaluate(observer)?;
        let p = self.state.progress.clone();
        let best = self.state.best_epoch == 0
            || val_accuracy > self.state.best_accuracy
            || (val_accuracy == self.state.best_accuracy && val_loss < self.state.best_loss);
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            step: self.state.global_step,
            lr,
            train_loss: p.loss_sum / p.seen.max(1) as f64,
            train_accuracy: p.correct as f64 / p.seen.max(1) as f64,
            val_loss,
            val_accuracy,
            val_images,
            best,
            train_images_per_s: p.seen as f64 / train_seconds.max(1e-9),
            epoch_seconds: seconds_before + clock.elapsed().as_secs_f64(),
        };
        if best {
            self.state.best_accuracy = val_accuracy;
            self.state.best_loss = val_loss;
            self.state.best_epoch = epoch + 1;
            let tensors = self.weights.state_dict()?;
            checkpoint::write_best(&self.out, &self.model_folder(&tensors))?;
        }
        self.state.history.push(metrics.clone());
        self.state.epoch += 1;
        self.state.step_in_epoch = 0;
        self.state.progress = EpochProgress::default();
        self.state.data_order = match self.state.epoch < self.settings.epochs {
            true => epoch_order(n, self.settings.seed, self.state.epoch),
            false => Vec::new(),
        };
        self.save_last()?;
        self.write_reports()?;
        observer.epoch_end(&metrics);
        Ok(())
    }

    /// Forward and backward over one batch; the loss is summed over the batch and divided by
    /// `normalizer`, the images of the whole optimizer step.
    fn forward_backward(&self, batch: data::Batch, normalizer: usize) -> Result<BatchStep> {
        let images = batch.len();
        if cpu_step::applies(&self.weights) && batch.height == self.weights.config.image_size {
            let step = cpu_step::forward_backward(
                &self.weights,
                &batch.pixels,
                &batch.labels,
                self.settings.label_smoothing,
                normalizer,
            )?;
            check_loss(step.loss_sum, self.state.global_step)?;
            return Ok(BatchStep {
                loss_sum: step.loss_sum,
                correct: count_correct(&step.logits, &batch.labels)?,
                images,
                grads: step.grads,
            });
        }
        let device = &self.weights.device;
        let pixels =
            Tensor::from_vec(batch.pixels, (images, 3, batch.height, batch.width), device)?;
        let network = self.weights.network(true)?;
        let logits = network.forward(&pixels).context("forward pass failed")?;
        let loss = cross_entropy(
            &logits,
            &batch.labels,
            self.settings.label_smoothing,
            normalizer,
        )?;
        let store = loss.backward().context("backward pass failed")?;
        let mut grads = HashMap::new();
        for (name, var) in &self.weights.trainable {
            if let Some(g) = store.get(var.as_tensor()) {
                grads.insert(name.clone(), g.clone());
            }
        }
        let loss_sum = loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * normalizer as f64;
        check_loss(loss_sum, self.state.global_step)?;
        Ok(BatchStep {
            loss_sum,
            correct: count_correct(&logits, &batch.labels)?,
            images,
            grads,
        })
    }

    /// Validation loss (mean, with the training label smoothing), top-1 accuracy and the
    /// number of images evaluated.
    fn evaluate(&mut self, observer: &mut dyn Observer) -> Result<(f64, f64, usize)> {
        let network = self.weights.network(false)?;
        let order: Vec<usize> = (0..self.val.len()).collect();
        let loader = Prefetch::start(
            self.val.clone(),
            order,
            0,
            self.settings.batch_size,
            self.prepare_eval(),
        );
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        for mut batch in loader {
            self.record_unreadable(std::mem::take(&mut batch.failed), observer);
            if batch.is_empty() {
                continue;
            }
            let images = batch.len();
            let pixels = Tensor::from_vec(
                batch.pixels,
                (images, 3, batch.height, batch.width),
                &self.weights.device,
            )?;
            let logits = network.forward(&pixels).context("forward pass failed")?;
            let loss = cross_entropy(&logits, &batch.labels, self.settings.label_smoothing, 1)?;
            loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            correct += count_correct(&logits, &batch.labels)?;
            seen += images;
        }
        if seen == 0 {
            bail!("no validation image could be read");
        }
        Ok((loss_sum / seen as f64, correct as f64 / seen as f64, seen))
    }

    fn prepare_train(&self, epoch: usize) -> Arc<Prepare> {
        let mut augment = Augment::new(self.settings.image_size as u32, &self.preprocess);
        augment.scale.0 = self.settings.crop_scale;
        let seed = self.settings.seed;
        Arc::new(move |position, sample: &Sample| {
            let image = load_rgb(&sample.path)?;
            let mut rng = Rng::derive(seed, Stream::Augment, &[epoch as u64, position as u64]);
            Ok(augment.apply(&image, &mut rng))
        })
    }

    fn prepare_eval(&self) -> Arc<Prepare> {
        let preprocess = self.preprocess.clone();
        Arc::new(move |_, sample: &Sample| Ok(preprocess.pixel_values(&load_rgb(&sample.path)?)))
    }

    /// Records images that failed to decode, warning once about each.
    fn record_unreadable(&mut self, failed: Vec<Unreadable>, observer: &mut dyn Observer) {
        for Unreadable { path, reason } in failed {
            if self.warned.insert(path.clone()) {
                observer.warn(&format!("{}: {reason} (skipped)", path.display()));
                self.state.unreadable.push((path, reason));
            }
        }
    }

    fn model_folder<'a>(&'a self, tensors: &'a HashMap<String, Tensor>) -> ModelFolder<'a> {
        ModelFolder {
            config: &self.weights.config,
            base_config: self.base_config.as_ref(),
            preprocess: &self.preprocess,
            tensors,
        }
    }

    /// Writes `last/` with the current weights, moments and state.
    fn save_last(&self) -> Result<()> {
        let tensors = self.weights.state_dict()?;
        let mut moments = HashMap::new();
        for p in &self.optimizer.params {
            moments.insert(format!("exp_avg.{}", p.name), p.m.to_device(&Device::Cpu)?);
            moments.insert(
                format!("exp_avg_sq.{}", p.name),
                p.v.to_device(&Device::Cpu)?,
            );
        }
        checkpoint::write_last(
            &self.out,
            &self.model_folder(&tensors),
            &moments,
            &self.state,
        )
    }

    /// Rewrites `metrics.jsonl` and `metrics.png` from the history.
    fn write_reports(&self) -> Result<()> {
        let history = &self.state.history;
        if history.is_empty() {
            return Ok(());
        }
        checkpoint::write_metrics(&self.out, history)?;
        let png = metrics_plot(history, self.state.best_epoch)?;
        crate::atomic::write_file(&self.out.join(checkpoint::PLOT_FILE), &png)
    }
}

/// The results of one batch's forward and backward passes.
struct BatchStep {
    loss_sum: f64,
    correct: usize,
    images: usize,
    grads: HashMap<String, Tensor>,
}

/// Stops a run whose loss is no longer finite.
fn check_loss(loss_sum: f64, global_step: usize) -> Result<()> {
    if !loss_sum.is_finite() {
        bail!(
            "the training loss is {loss_sum} at step {}: training diverged (try a lower --lr)",
            global_step + 1
        );
    }
    Ok(())
}

fn count_correct(logits: &Tensor, labels: &[u32]) -> Result<usize> {
    let predicted = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    Ok(predicted.iter().zip(labels).filter(|(p, l)| p == l).count())
}

fn check_data(data: &ImageFolder) -> Result<()> {
    if data.train.is_empty() {
        bail!("{}: no training images", data.root.display());
    }
    if data.val.is_empty() {
        bail!(
            "{}: no validation images (add a val/ folder beside train/, or raise --val-split)",
            data.root.display()
        );
    }
    Ok(())
}

/// The loss and accuracy curves as a PNG.
pub fn metrics_plot(history: &[EpochMetrics], best_epoch: usize) -> Result<Vec<u8>> {
    let series = |name: &str, color, f: &dyn Fn(&EpochMetrics) -> f64| plot::Series {
        name: name.into(),
        color,
        points: history.iter().map(|m| (m.epoch as f64, f(m))).collect(),
    };
    let marker = (best_epoch > 0).then_some(best_epoch as f64);
    let panels = [
        plot::Panel {
            title: "loss".into(),
            x_label: "epoch".into(),
            percent: false,
            series: vec![
                series("train", plot::BLUE, &|m| m.train_loss),
                series("val", plot::ORANGE, &|m| m.val_loss),
            ],
            marker,
        },
        plot::Panel {
            title: "accuracy".into(),
            x_label: "epoch".into(),
            percent: true,
            series: vec![
                series("train", plot::BLUE, &|m| m.train_accuracy),
                series("val", plot::ORANGE, &|m| m.val_accuracy),
            ],
            marker,
        },
    ];
    let mut bytes = Vec::new();
    plot::render(&panels)
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .context("cannot encode the metrics plot")?;
    Ok(bytes)
}
