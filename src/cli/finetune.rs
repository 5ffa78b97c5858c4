//! `vit finetune`: train on a folder of labelled images and save a model `classify` loads.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vit::device::{device_name, DTypeRequest, DeviceRequest};
use vit::hub::ModelSpec;
use vit::model::weights::{check_state_dict, infer_config, read_weights_in};
use vit::model::{Layout, ViTConfig};
use vit::preprocess::PreprocessConfig;
use vit::train::checkpoint::{self, OUTPUTS};
use vit::train::data::{readable, ImageFolder, Unreadable, ValSource};
use vit::train::model::{adapt_base, init_weights, preset_config, Head};
use vit::train::{
    eval_preprocess, EpochMetrics, Observer, Settings, Start, StepReport, Summary, Trainer,
};

use super::{ImageBackendArgs, Outcome};

/// Options that define a run; a resumed run keeps its saved ones, so these conflict with
/// `--resume`.
const RUN_OPTIONS: [&str; 19] = [
    "model",
    "preset",
    "revision",
    "num_heads",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_ratio",
    "label_smoothing",
    "grad_accum",
    "clip_grad",
    "freeze_backbone",
    "image_size",
    "crop_scale",
    "val_split",
    "seed",
    "save_steps",
    "image_backend",
];

#[derive(Args)]
#[command(
    after_help = "The output folder holds the best model by validation accuracy (an HF \
model folder: config.json, model.safetensors, preprocessor_config.json), metrics.jsonl (one \
line per epoch) and metrics.png; OUT_DIR/last/ holds the latest checkpoint with the trainer \
state, for --resume. Runs are reproducible on the CPU: the same seed and thread count \
(RAYON_NUM_THREADS) give the same weights, resumed or not.\n\
Plain ViTs train on the CPU engine's hand-written backward pass; DeiT and DINOv2 train through \
candle's autograd (slower; with --freeze-backbone only the head's backward runs). A backbone \
gets its HF classifier's head (DINOv2: class token and mean of the patches); DeiT's teacher \
model becomes DeiTForImageClassification."
)]
pub struct FinetuneArgs {
    /// Images in class folders: DIR/<class>/<image>, or DIR/train/<class>/<image> with
    /// DIR/val/ (or validation/, test/) [with --resume: the saved path].
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Base model: hub id, local HF model folder or weights file (.safetensors, .bin, .pth).
    #[arg(long, short = 'm', value_name = "BASE", conflicts_with = "preset")]
    #[arg(required_unless_present_any = ["preset", "resume"])]
    model: Option<String>,
    /// Hub revision of --model (branch, tag or commit).
    #[arg(long, requires = "model")]
    revision: Option<String>,
    /// Attention heads, for a weights file without config.json [default: hidden size / 64].
    #[arg(long, value_name = "N", requires = "model")]
    num_heads: Option<usize>,
    /// Train from scratch with a preset architecture: vit-micro-patch7-28 or
    /// vit-mini-patch4-32 (small, for small images), or one of `vit bench`'s, e.g.
    /// vit-tiny-patch16-224.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Output folder.
    #[arg(long, short = 'o', value_name = "OUT_DIR")]
    output: PathBuf,
    /// Passes over the training images [default: 10].
    #[arg(long, value_name = "N")]
    epochs: Option<usize>,
    /// Images per forward pass [default: 32].
    #[arg(long, short = 'b', value_name = "N")]
    batch_size: Option<usize>,
    /// Peak learning rate [default: 1e-4, or 1e-3 with --preset].
    #[arg(long)]
    lr: Option<f64>,
    /// AdamW's decoupled weight decay (not on biases, norms, position embeddings or the class
    /// token) [default: 0.05].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Fraction of the steps spent warming the learning rate up linearly; then it decays as a
    /// cosine to 0 [default: 0.1].
    #[arg(long, value_name = "FRACTION")]
    warmup_ratio: Option<f64>,
    /// Label smoothing of the cross-entropy loss [default: 0.1].
    #[arg(long, value_name = "EPSILON")]
    label_smoothing: Option<f64>,
    /// Batches whose gradients add up to one optimizer step [default: 1].
    #[arg(long, value_name = "N")]
    grad_accum: Option<usize>,
    /// Clip gradients to this global L2 norm; 0 disables [default: 1.0].
    #[arg(long, value_name = "NORM")]
    clip_grad: Option<f64>,
    /// Train only the classifier head.
    #[arg(long)]
    freeze_backbone: bool,
    /// Square training and evaluation input size; position embeddings of a base model are
    /// resized bicubically [default: the model's].
    #[arg(long, value_name = "PIXELS")]
    image_size: Option<usize>,
    #[command(flatten)]
    image_backend: ImageBackendArgs,
    /// Smallest area of the training augmentation's random resized crop, as a fraction of
    /// the image (raise it for small images) [default: 0.08, torchvision's].
    #[arg(long, value_name = "FRACTION")]
    crop_scale: Option<f64>,
    /// Fraction of each class held out for validation when DIR has no val/ folder
    /// [default: 0.1].
    #[arg(long, value_name = "FRACTION")]
    val_split: Option<f64>,
    /// Seed of the split, the head's and from-scratch initialization, the data order and the
    /// augmentation [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Also checkpoint last/ every N optimizer steps, not only at the end of each epoch
    /// [default: 0, epoch ends only].
    #[arg(long, value_name = "N")]
    save_steps: Option<usize>,
    /// Continue the run checkpointed in OUT_DIR/last/ with its saved settings.
    #[arg(long, conflicts_with_all = RUN_OPTIONS)]
    resume: bool,
    /// auto (CUDA, then Metal, then CPU), cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// The dtype the network computes in; weights and optimizer stay f32 [default: f32].
    #[arg(long, conflicts_with = "resume")]
    dtype: Option<DTypeRequest>,
    /// Replace the outputs of an earlier run in OUT_DIR.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
}

/// Where a new run's weights come from.
enum Source {
    Model {
        spec: ModelSpec,
        num_heads: Option<usize>,
    },
    Preset(String),
}

/// The checked arguments (built once per run, so its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Plan {
    New {
        settings: Settings,
        source: Source,
        /// `None`: the model's own input size.
        image_size: Option<usize>,
    },
    Resume {
        data: Option<PathBuf>,
    },
}

fn plan(args: &FinetuneArgs) -> Result<Plan> {
    if args.output.exists() && !args.output.is_dir() {
        bail!("{}: exists and is not a folder", args.output.display());
    }
    if args.resume {
        return Ok(Plan::Resume {
            data: args.data.clone(),
        });
    }
    let source = match (&args.model, &args.preset) {
        (Some(model), None) => Source::Model {
            spec: ModelSpec::parse(model, args.revision.as_deref())?,
            num_heads: args.num_heads,
        },
        (None, Some(preset)) => {
            preset_config(preset)?;
            Source::Preset(preset.clone())
        }
        _ => bail!("give --model BASE or --preset NAME"),
    };
    let positive = |name: &str, value: Option<usize>, default: usize| match value {
        Some(0) => bail!("--{name} must be at least 1"),
        other => Ok(other.unwrap_or(default)),
    };
    let fraction = |name: &str, value: Option<f64>, default: f64, one_allowed: bool| {
        let v = value.unwrap_or(default);
        if !(v >= 0.0 && (v < 1.0 || (one_allowed && v == 1.0))) {
            bail!(
                "--{name} must be in [0, 1{}",
                if one_allowed { "]" } else { ")" }
            );
        }
        Ok(v)
    };
    let lr = args
        .lr
        .unwrap_or(if args.preset.is_some() { 1e-3 } else { 1e-4 });
    if !(lr.is_finite() && lr > 0.0) {
        bail!("--lr must be a positive number");
    }
    let non_negative = |name: &str, value: Option<f64>, default: f64| match value {
        Some(v) if !(v.is_finite() && v >= 0.0) => bail!("--{name} must be 0 or more"),
        other => Ok(other.unwrap_or(default)),
    };
    if args.image_size == Some(0) {
        bail!("--image-size must be at least 1");
    }
    let dtype = match args.dtype.unwrap_or(DTypeRequest::F32) {
        DTypeRequest::Auto | DTypeRequest::F32 => "f32",
        DTypeRequest::F16 => "f16",
        DTypeRequest::BF16 => "bf16",
        DTypeRequest::Int8 => {
            bail!("--dtype int8 is for inference; finetune trains in f32, f16 or bf16")
        }
    };
    let data = args.data.clone().context("--data is required")?;
    let existing: Vec<&str> = OUTPUTS
        .iter()
        .copied()
        .filter(|name| args.output.join(name).exists())
        .collect();
    if !existing.is_empty() && !args.force {
        bail!(
            "{}: holds the outputs of an earlier run ({}); use --resume to continue it or \
             --force to replace it",
            args.output.display(),
            existing.join(", ")
        );
    }
    let settings = Settings {
        data,
        base: match &source {
            Source::Model { spec, .. } => spec.describe(),
            Source::Preset(name) => format!("preset:{name}"),
        },
        epochs: positive("epochs", args.epochs, 10)?,
        batch_size: positive("batch-size", args.batch_size, 32)?,
        lr,
        weight_decay: non_negative("weight-decay", args.weight_decay, 0.05)?,
        warmup_ratio: fraction("warmup-ratio", args.warmup_ratio, 0.1, true)?,
        label_smoothing: fraction("label-smoothing", args.label_smoothing, 0.1, false)?,
        grad_accum: positive("grad-accum", args.grad_accum, 1)?,
        clip_grad: non_negative("clip-grad", args.clip_grad, 1.0)?,
        freeze_backbone: args.freeze_backbone,
        image_size: 0,
        crop_scale: match args.crop_scale {
            Some(v) if !(v > 0.0 && v <= 1.0) => bail!("--crop-scale must be in (0, 1]"),
            other => other.unwrap_or(0.08),
        },
        val_split: fraction("val-split", args.val_split, 0.1, false)?,
        seed: args.seed.unwrap_or(0),
        save_steps: args.save_steps.unwrap_or(0),
        dtype: dtype.into(),
        image_backend: args.image_backend.request(),
    };
    Ok(Plan::New {
        settings,
        source,
        image_size: args.image_size,
    })
}

pub fn run(args: FinetuneArgs) -> Result<Outcome> {
    let plan = plan(&args)?;
    let out = args.output.clone();
    let mut trainer = match plan {
        Plan::New {
            settings,
            source,
            image_size,
        } => start_new(settings, source, image_size, &args, &out)?,
        Plan::Resume { data } => start_resumed(data, &args, &out)?,
    };
    let mut observer = Progress::new(trainer.settings().epochs);
    let summary = trainer.run(&mut observer)?;
    observer.finish();
    print_summary(&out, &summary)?;
    Ok(match summary.unreadable {
        0 => Outcome::Success,
        _ => Outcome::PartialFailure,
    })
}

/// Opens the dataset and sets unreadable images aside.
fn open_data(root: &Path, val_split: f64, seed: u64) -> Result<(ImageFolder, Vec<Unreadable>)> {
    let mut data = ImageFolder::open(root, val_split, seed)?;
    let (train, mut failed) = readable(std::mem::take(&mut data.train));
    let (val, val_failed) = readable(std::mem::take(&mut data.val));
    failed.extend(val_failed);
    data.train = train;
    data.val = val;
    let validation = match &data.val_source {
        ValSource::Folder(name) => format!("{name}/"),
        ValSource::Split(fraction) => format!("{:.0}% of each class", fraction * 100.0),
    };
    log!(
        "vit: data {}: {} training and {} validation images ({validation}), {} classes: {}",
        root.display(),
        data.train.len(),
        data.val.len(),
        data.classes.len(),
        abbreviate(&data.classes)
    );
    Ok((data, failed))
}

fn abbreviate(classes: &[String]) -> String {
    match classes.len() {
        0..=8 => classes.join(", "),
        n => format!("{}, ... ({} more)", classes[..6].join(", "), n - 6),
    }
}

fn open_device(request: DeviceRequest) -> Result<candle_core::Device> {
    let chosen = request.open()?;
    if let Some(note) = &chosen.fallback_note {
        log!("vit: {note}");
    }
    Ok(chosen.device)
}

fn start_new(
    mut settings: Settings,
    source: Source,
    image_size: Option<usize>,
    args: &FinetuneArgs,
    out: &Path,
) -> Result<Trainer> {
    let (data, unreadable) = open_data(&settings.data, settings.val_split, settings.seed)?;
    let (config, base_config, preprocess, weights) = match &source {
        Source::Model { spec, num_heads } => {
            let files = spec.fetch()?;
            let base_config: Option<serde_json::Value> = match &files.config {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("{}: cannot read", path.display()))?;
                    Some(
                        serde_json::from_str(&text)
                            .with_context(|| format!("{}: invalid JSON", path.display()))?,
                    )
                }
                None => None,
            };
            let layout = base_config.as_ref().map(Layout::of_config).transpose()?;
            let (layout, weights) = read_weights_in(&files.weights, layout)?;
            let no_config = serde_json::Value::Object(Default::default());
            let config = match (&base_config, layout) {
                (Some(json), _) => layout
                    .config(json, &weights, *num_heads)
                    .with_context(|| format!("{}", files.config.as_ref().unwrap().display()))?,
                (None, layout) if layout == Layout::TIMM => layout
                    .config(&no_config, &weights, *num_heads)
                    .with_context(|| format!("{}", files.weights.display()))?,
                (None, _) => infer_config(&weights, *num_heads)
                    .with_context(|| format!("{}", files.weights.display()))?,
            };
            let unused = check_state_dict(&weights, &config)
                .with_context(|| format!("{}", files.weights.display()))?;
            for name in unused
                .into_iter()
                .filter(|name| !layout.unused_by_design(name, &config))
            {
                log!(
                    "vit: warning: {}: ignoring unused tensor {name}",
                    files.weights.display()
                );
            }
            let preprocess = match &files.preprocessor {
                Some(path) => PreprocessConfig::from_file(path)?,
                None => layout.default_preprocess(base_config.as_ref(), &config)?,
            };
            // The model's preprocessing gives its input size (DINOv2 stores positions for
            // 518 pixels and is fed 224), else its config.
            let size = match (
                image_size,
                &files.preprocessor,
                preprocess.output_size(640, 480),
            ) {
                (None, Some(_), (height, width)) if height == width => Some(height as usize),
                _ => image_size,
            };
            let size = checked_size(size, &config)?;
            let (adapted, weights, head) =
                adapt_base(weights, &config, &data.classes, size, settings.seed)
                    .with_context(|| format!("{}", files.weights.display()))?;
            let what = match head {
                Head::Kept => "head kept (same labels)".to_string(),
                Head::Reordered => "head kept, rows reordered to the class order".to_string(),
                Head::Replaced { from_labels } => {
                    format!(
                        "head replaced ({from_labels} labels -> {})",
                        data.classes.len()
                    )
                }
            };
            log!("vit: model {}: {what}", spec.describe());
            (adapted, base_config, preprocess, weights)
        }
        Source::Preset(name) => {
            let mut config = preset_config(name)?;
            config.image_size = checked_size(image_size, &config)?;
            config.id2label = data.classes.clone();
            config.validate()?;
            let weights = init_weights(&config, settings.seed)?;
            log!(
                "vit: model {name}: from scratch, {} classes",
                data.classes.len()
            );
            (config, None, PreprocessConfig::default(), weights)
        }
    };
    settings.image_size = config.image_size;
    let preprocess = eval_preprocess(
        &preprocess.on_backend(settings.image_backend)?,
        config.image_size as u32,
    );
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create output folder", out.display()))?;
    if args.force {
        for name in OUTPUTS {
            let path = out.join(name);
            let removed = match path.is_dir() {
                true => std::fs::remove_dir_all(&path),
                false if path.exists() => std::fs::remove_file(&path),
                false => Ok(()),
            };
            removed.with_context(|| format!("{}: cannot remove", path.display()))?;
        }
    }
    let device = open_device(args.device)?;
    log_run(&settings, &device);
    let start = Start {
        config,
        base_config,
        preprocess,
        weights,
    };
    Trainer::new(settings, out, data, start, &device, unreadable)
}

/// The input size: asked for or the model's, a multiple of the patch size.
fn checked_size(asked: Option<usize>, config: &ViTConfig) -> Result<usize> {
    let size = asked.unwrap_or(config.image_size);
    if size < config.patch_size || !size.is_multiple_of(config.patch_size) {
        bail!(
            "--image-size {size} is not a positive multiple of the model's patch size {}",
            config.patch_size
        );
    }
    Ok(size)
}

fn start_resumed(data: Option<PathBuf>, args: &FinetuneArgs, out: &Path) -> Result<Trainer> {
    let last = checkpoint::recover_last(out)?;
    let state = checkpoint::read_state(&last)?;
    let settings = &state.settings;
    let root = data.unwrap_or_else(|| settings.data.clone());
    let (data, _) = open_data(&root, settings.val_split, settings.seed)?;
    let device = open_device(args.device)?;
    log!(
        "vit: resuming {} at epoch {} step {} of {} epochs",
        last.display(),
        state.epoch + 1,
        state.step_in_epoch,
        settings.epochs
    );
    log_run(settings, &device);
    Trainer::resume(out, data, &device)
}

fn log_run(settings: &Settings, device: &candle_core::Device) {
    log!(
        "vit: {} epochs, batch {}{}, lr {:e} (warmup {}, cosine), weight decay {}, label \
         smoothing {}, clip {}, {}px (crops from {:.0}% of the area), seed {}, {} {} ({} threads){}",
        settings.epochs,
        settings.batch_size,
        match settings.grad_accum {
            1 => String::new(),
            n => format!(" x {n} accumulated"),
        },
        settings.lr,
        settings.warmup_ratio,
        settings.weight_decay,
        settings.label_smoothing,
        settings.clip_grad,
        settings.image_size,
        settings.crop_scale * 100.0,
        settings.seed,
        device_name(device),
        settings.dtype,
        candle_core::utils::get_num_threads(),
        match settings.freeze_backbone {
            true => ", backbone frozen",
            false => "",
        },
    );
}

fn print_summary(out: &Path, summary: &Summary) -> Result<()> {
    let Some(last) = &summary.last else {
        return Ok(());
    };
    writeln!(
        std::io::stdout(),
        "{}: best validation accuracy {:.2}% at epoch {} of {} ({} images); last epoch {:.2}%, \
         checkpoint {}",
        out.display(),
        summary.best_accuracy * 100.0,
        summary.best_epoch,
        summary.epochs,
        last.val_images,
        last.val_accuracy * 100.0,
        out.join(checkpoint::LAST).display()
    )
    .context("cannot write to stdout")
}

/// A progress bar per epoch on stderr (when it is a terminal) and a line per epoch.
struct Progress {
    bar: ProgressBar,
    epochs: usize,
}

impl Progress {
    fn new(epochs: usize) -> Self {
        Self {
            bar: ProgressBar::hidden(),
            epochs,
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Observer for Progress {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, steps: usize, done: usize) {
        self.bar.finish_and_clear();
        self.epochs = epochs;
        self.bar = match std::io::stderr().is_terminal() {
            true => ProgressBar::new(steps as u64),
            false => ProgressBar::hidden(),
        };
        self.bar.set_style(
            ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} steps  {msg}")
                .expect("valid progress template"),
        );
        self.bar.set_prefix(format!("{}/{epochs}", epoch + 1));
        self.bar.set_position(done as u64);
    }

    fn step(&mut self, report: &StepReport) {
        self.bar.set_position(report.step_in_epoch as u64);
        self.bar.set_message(format!(
            "loss {:.4}  lr {:.2e}  {:.1} img/s",
            report.loss, report.lr, report.images_per_s
        ));
    }

    fn epoch_end(&mut self, m: &EpochMetrics) {
        self.bar.finish_and_clear();
        log!(
            "vit: epoch {}/{}  train loss {:.4} acc {:.2}%  val loss {:.4} acc {:.2}%{}  \
             {:.1} img/s  {:.1}s",
            m.epoch,
            self.epochs,
            m.train_loss,
            m.train_accuracy * 100.0,
            m.val_loss,
            m.val_accuracy * 100.0,
            if m.best { " (best)" } else { "" },
            m.train_images_per_s,
            m.epoch_seconds
        );
    }

    fn warn(&mut self, message: &str) {
        self.bar.suspend(|| log!("vit: warning: {message}"));
    }
}
