//! Argument parsing, dispatch and error reporting. Each subcommand parses its arguments,
//! checks them into a plan, then runs; errors print as `vit: context: message`.

/// `eprintln!` for logs and progress lines: a write that fails (stderr closed, or a pipe
/// whose reader has gone) is ignored rather than a panic.
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod bench;
mod classify;
mod convert;
mod embed;
mod explain;
mod finetune;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use vit::device::{device_name, DTypeRequest, DeviceRequest};
use vit::hub::{ModelSpec, DEFAULT_MODEL};
use vit::inputs::{collect_inputs, is_stdin, read_file_list, Input, Shard};
use vit::model::{AttentionKernel, Int8Weights, LoadOptions, LoadedModel, ModelOptions};
use vit::preprocess::{BackendRequest, PreprocessConfig, MAX_IMAGE_PIXELS};

/// Run, measure, convert and fine-tune Vision Transformers (HF ViT, DeiT, DINOv2, CLIP and
/// SigLIP checkpoints) on Candle, without Python.
#[derive(Parser)]
#[command(name = "vit", version, propagate_version = true, max_term_width = 100)]
#[command(
    after_help = "Models come from the HuggingFace Hub (cached under HF_HOME) or a local \
folder or weights file. Results go to stdout, logs and progress to stderr.\n\
Exit status: 0 success, 1 some inputs failed, 2 usage or model error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the top classes of images (files or folders).
    Classify(classify::ClassifyArgs),
    /// Write image embeddings (class token, mean of patches, or every token).
    Embed(embed::EmbedArgs),
    /// Measure throughput and latency of a model or preset.
    Bench(bench::BenchArgs),
    /// Convert PyTorch or timm checkpoints into an HF-format safetensors model folder.
    Convert(convert::ConvertArgs),
    /// Train on a folder of labelled images and save a model `classify` loads.
    Finetune(finetune::FinetuneArgs),
    /// Show where the model looked: attention maps over the images (PNGs, safetensors).
    Explain(explain::ExplainArgs),
    /// Serve classification and embeddings over HTTP (OpenAI's embeddings API), batched.
    Serve(serve::ServeArgs),
    /// Print a shell completion script: `vit completions bash > /etc/bash_completion.d/vit`,
    /// `vit completions zsh > ~/.zfunc/_vit`, `vit completions fish >
    /// ~/.config/fish/completions/vit.fish`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (vit.1 and one per subcommand) into DIR (`make man`).
    #[command(hide = true)]
    ManPages {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// How a run ended, for the exit status.
pub enum Outcome {
    /// Everything worked (exit 0).
    Success,
    /// Some inputs failed; the rest were processed (exit 1).
    PartialFailure,
}

/// Where the model comes from and how it runs; shared by the subcommands.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Hub model id, local HF model folder, or a single weights file
    /// (.safetensors, .bin, .pth).
    #[arg(long, short = 'm', env = "VIT_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    pub revision: Option<String>,
    /// auto (CUDA, then Metal, then CPU), cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// auto (f32 on CPU, bf16 on CUDA, f16 on Metal), f32, f16, bf16 or int8 (CPU: dense
    /// layers quantized to int8 as the model loads, f32 elsewhere).
    #[arg(long, default_value = "auto")]
    pub dtype: DTypeRequest,
    /// Attention heads, for a weights file without config.json [default: hidden size / 64].
    #[arg(long, value_name = "N")]
    pub num_heads: Option<usize>,
    #[command(flatten)]
    pub image_backend: ImageBackendArgs,
}

/// Whose image preprocessing to reproduce.
#[derive(Args, Debug, Clone, Copy)]
pub struct ImageBackendArgs {
    /// Preprocess images as HF's torchvision backend (transformers 5's default where
    /// torchvision is installed) or its PIL backend does, bit for bit [default: torchvision
    /// for HF models (PIL for a box or Hamming resize, which torchvision lacks); for timm
    /// checkpoints, timm's transform, which runs on PIL images].
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub image_backend: Option<ImageBackendArg>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageBackendArg {
    Torchvision,
    Pil,
}

impl ImageBackendArgs {
    /// The request as the library takes it.
    pub fn request(&self) -> Option<BackendRequest> {
        self.image_backend.map(|arg| match arg {
            ImageBackendArg::Torchvision => BackendRequest::Torchvision,
            ImageBackendArg::Pil => BackendRequest::Pil,
        })
    }

    /// The model's preprocessing on the requested backend.
    pub fn apply(&self, preprocess: &PreprocessConfig) -> Result<PreprocessConfig> {
        preprocess.on_backend(self.request())
    }
}

/// The images a subcommand processes.
#[derive(Args, Debug, Clone)]
pub struct InputArgs {
    /// Image files or folders (searched recursively for image files, in sorted order); `-`
    /// reads one image from stdin (`./-` names a file called `-`).
    #[arg(value_name = "IMG_OR_DIR")]
    pub inputs: Vec<PathBuf>,
    /// Also take the files or folders listed in FILE, one a line (`-`: stdin), after the
    /// arguments; lines of at most 64 KiB, at most 10 million of them. A FIFO with no writer
    /// blocks until one opens it, as it does for any reader.
    #[arg(long, value_name = "FILE")]
    pub files_from: Option<PathBuf>,
    /// Process only shard I of N (I from 0): every N-th input of the sorted list, from the
    /// I-th, so that N processes split a collection with no overlap.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Refuse to decode an image of more pixels than this (a decompression bomb, or a
    /// header that lies); 0: no limit [default: Pillow's limit, 89478485].
    #[arg(long, value_name = "N", default_value_t = MAX_IMAGE_PIXELS, hide_default_value = true)]
    pub max_image_pixels: u64,
}

impl InputArgs {
    /// Whether any images were named.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty() && self.files_from.is_none()
    }

    /// The work list: the arguments, then the listed paths, then this shard of them.
    pub fn collect(&self) -> Result<Vec<Input>> {
        vit::preprocess::set_max_image_pixels(self.max_image_pixels);
        if self.is_empty() {
            anyhow::bail!("no images given (IMG_OR_DIR arguments or --files-from)");
        }
        let mut paths = self.inputs.clone();
        let stdin_images = paths.iter().filter(|p| is_stdin(p)).count();
        let stdin_list = self.files_from.as_deref().is_some_and(is_stdin);
        if stdin_images + usize::from(stdin_list) > 1 {
            anyhow::bail!("stdin can be read once: give `-` (an image, or --files-from -) once");
        }
        if let Some(list) = &self.files_from {
            paths.extend(read_file_list(list)?);
            if paths.is_empty() {
                anyhow::bail!("no images given: {} lists no files", list.display());
            }
        }
        let inputs = collect_inputs(&paths);
        Ok(match self.shard {
            Some(shard) => shard.select(inputs),
            None => inputs,
        })
    }
}

/// A model loaded for a subcommand, with the device it runs on.
pub struct ReadyModel {
    pub loaded: LoadedModel,
    pub device: candle_core::Device,
}

impl ReadyModel {
    /// The model as a classifier of `image_size` inputs: into `zero_shot` labels put into
    /// their template (an image-text model's text tower embeds them), or its own classes.
    /// `model` names it in errors.
    pub fn classifier(
        self,
        model: &str,
        image_size: Option<usize>,
        zero_shot: Option<(Vec<String>, String)>,
    ) -> Result<vit::classifier::Classifier> {
        use vit::classifier::Classifier;
        match zero_shot {
            Some((labels, template)) => {
                Classifier::zero_shot(self.loaded, self.device, image_size, labels, &template)
                    .with_context(|| model.to_string())
            }
            None => Classifier::new(self.loaded, self.device, image_size),
        }
    }
}

impl ModelArgs {
    /// Opens the device, fetches the model and loads it, logging what was used on stderr.
    pub fn load(&self, attention: AttentionKernel) -> Result<ReadyModel> {
        let chosen = self.device.open()?;
        if let Some(note) = &chosen.fallback_note {
            log!("vit: {note}");
        }
        let device = chosen.device;
        let dtype = self.dtype.resolve(&device);
        let int8 = self.dtype == DTypeRequest::Int8;
        if int8 && !device.is_cpu() {
            anyhow::bail!(
                "--dtype int8 runs on the CPU only; this run is on {} (use --device cpu, or \
                 f32, f16 or bf16 there)",
                device_name(&device)
            );
        }
        let spec = ModelSpec::parse(&self.model, self.revision.as_deref())?;
        let files = spec.fetch()?;
        let options = LoadOptions {
            device: device.clone(),
            dtype,
            num_heads: self.num_heads,
            model: ModelOptions {
                attention,
                int8,
                ..ModelOptions::default()
            },
        };
        let mut loaded = LoadedModel::load(&files, &options)
            .with_context(|| format!("cannot load model {}", spec.describe()))?;
        loaded.preprocess = self.image_backend.apply(&loaded.preprocess)?;
        for name in &loaded.unused_tensors {
            log!(
                "vit: warning: {}: ignoring unused tensor {name}",
                files.weights.display()
            );
        }
        let head = match (loaded.config.num_labels(), &loaded.text) {
            (_, Some(_)) => "image-text".to_string(),
            (0, None) => "no head".to_string(),
            (n, None) => format!("{n} labels"),
        };
        if loaded.int8 == Int8Weights::Dequantized {
            log!(
                "vit: {}: int8 weights dequantized to {} on {} (int8 products run on the CPU in \
                 f32)",
                files.weights.display(),
                dtype.as_str(),
                device_name(&device)
            );
        }
        log!(
            "vit: model {} ({}, {head}) on {} {}, images preprocessed as {}",
            spec.describe(),
            loaded.layout.name(),
            device_name(&device),
            if loaded.int8.runs_int8() {
                "int8"
            } else {
                dtype.as_str()
            },
            loaded.preprocess.backend.describe()
        );
        Ok(ReadyModel { loaded, device })
    }
}

/// Texts given on the command line and in a file (one a line; `-`: stdin), in that order;
/// `what` names them in messages ("label", "text").
pub fn collect_texts(
    inline: &[String],
    file: Option<&std::path::Path>,
    what: &str,
) -> Result<Vec<String>> {
    let mut texts = inline.to_vec();
    if let Some(path) = file {
        let name = vit::inputs::source_name(path);
        let lines = vit::inputs::read_lines(path, &format!("{what} file"))?;
        for (number, line) in lines {
            let text = String::from_utf8(line)
                .map_err(|_| anyhow::anyhow!("{name}: line {number} is not UTF-8"))?;
            if !text.trim().is_empty() {
                texts.push(text);
            }
        }
        if texts.is_empty() {
            anyhow::bail!("{name}: no {what}s in it");
        }
    }
    Ok(texts)
}

/// Sizes the rayon pool (and candle's matmul threads, which follow `RAYON_NUM_THREADS`).
pub fn set_threads(threads: usize) -> Result<()> {
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("cannot size the thread pool")
}

/// A progress bar on stderr, only for a terminal and more than a few images.
pub fn progress_bar(total: usize) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if total < 16 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} images  {per_sec}  eta {eta}",
        )
        .expect("valid progress template"),
    );
    bar
}

/// Quotes a CSV field when it holds a comma, quote or newline (RFC 4180).
pub fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

pub use vit::one_line;

/// Parses the command line, runs the subcommand and maps the outcome to an exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Classify(args) => classify::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Finetune(args) => finetune::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Completions { shell } => completions(shell),
        Command::ManPages { dir } => man_pages(&dir),
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::PartialFailure) => ExitCode::from(1),
        // The reader of stdout went away (`vit classify DIR | head -1`): nothing is lost that
        // anyone reads, so stop quietly, as ripgrep does.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            log!("vit: {}", one_line(&err));
            ExitCode::from(2)
        }
    }
}

/// Prints the completion script of `shell` on stdout.
fn completions(shell: clap_complete::Shell) -> Result<Outcome> {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "vit", &mut script);
    std::io::Write::write_all(&mut std::io::stdout(), &script).context("cannot write to stdout")?;
    Ok(Outcome::Success)
}

/// Writes `vit.1` and a page per subcommand (`vit-classify.1`, ...) into `dir`.
fn man_pages(dir: &std::path::Path) -> Result<Outcome> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("{}: cannot write the man pages", dir.display()))?;
    Ok(Outcome::Success)
}

/// Whether an error comes from writing to a pipe whose reader has closed it.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("tabby, tabby cat"), "\"tabby, tabby cat\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
