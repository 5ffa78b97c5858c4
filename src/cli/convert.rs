//! `vit convert`: PyTorch and timm checkpoints to HF safetensors model folders.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use candle_core::DType;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vit::convert::{
    convert, default_output, input_bytes, parse_byte_size, ConvertOptions, Layout, NoProgress,
    Progress, Summary,
};
use vit::hub::ModelSpec;

use super::Outcome;

#[derive(Args)]
pub struct ConvertArgs {
    /// An HF model folder or hub id, or a weights file: PyTorch .bin/.pth/.pt (state dict,
    /// possibly nested under state_dict/model, possibly with module. prefixes), .safetensors,
    /// or a shard index (.index.json).
    #[arg(value_name = "INPUT")]
    input: String,
    /// Output folder [default: beside INPUT, named after it with -hf: x.pth → x-hf].
    #[arg(long, short = 'o', value_name = "OUT_DIR")]
    output: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Target::Safetensors)]
    to: Target,
    /// dtype of the written tensors: keep each tensor's, or cast.
    #[arg(long, value_enum, default_value_t = DTypeArg::Keep)]
    dtype: DTypeArg,
    /// Tensor naming of INPUT.
    #[arg(long = "from", value_enum, default_value_t = FromArg::Auto)]
    from: FromArg,
    /// Replace OUT_DIR if it exists.
    #[arg(long)]
    force: bool,
    /// Largest weights file; a bigger model is split into model-0000N-of-0000M.safetensors
    /// with model.safetensors.index.json. KB, MB, GB are powers of 1000, KiB, MiB, GiB of 1024.
    #[arg(long, value_name = "SIZE", default_value = "5GB", value_parser = size_arg)]
    max_shard_size: u64,
    /// Attention heads, for a checkpoint without an HF config.json (timm, or a bare weights
    /// file) [default: hidden size / 64, or 16 for the ViT-H/g/G widths].
    #[arg(long, value_name = "N")]
    num_heads: Option<usize>,
    /// Format of the summary printed on stdout.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    /// An HF model folder with safetensors weights.
    Safetensors,
}

#[derive(Clone, Copy, ValueEnum)]
enum DTypeArg {
    /// As stored in INPUT.
    Keep,
    F32,
    F16,
    Bf16,
    /// The encoder's dense weights as int8 with one f32 scale per output channel, the rest
    /// f32 (README, "int8 model folders").
    Int8,
}

#[derive(Clone, Copy, ValueEnum)]
enum FromArg {
    /// Detected from the tensor names.
    Auto,
    /// HF ViTForImageClassification names.
    Hf,
    /// timm VisionTransformer names (fused qkv).
    Timm,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One `key value` line each.
    Text,
    /// One JSON object.
    Json,
}

fn size_arg(text: &str) -> Result<u64, String> {
    parse_byte_size(text).map_err(|e| e.to_string())
}

pub fn run(args: ConvertArgs) -> Result<Outcome> {
    ensure!(args.num_heads != Some(0), "--num-heads must be at least 1");
    let Target::Safetensors = args.to;
    let spec = ModelSpec::parse(&args.input, None)?;
    let output = args.output.unwrap_or_else(|| default_output(&spec));
    let files = spec.fetch()?;
    let options = ConvertOptions {
        layout: match args.from {
            FromArg::Auto => None,
            FromArg::Hf => Some(Layout::Hf),
            FromArg::Timm => Some(Layout::Timm),
        },
        dtype: match args.dtype {
            DTypeArg::Keep | DTypeArg::Int8 => None,
            DTypeArg::F32 => Some(DType::F32),
            DTypeArg::F16 => Some(DType::F16),
            DTypeArg::Bf16 => Some(DType::BF16),
        },
        int8: matches!(args.dtype, DTypeArg::Int8),
        max_shard_size: args.max_shard_size,
        num_heads: args.num_heads,
        overwrite: args.force,
    };
    log!(
        "vit: converting {} to {}",
        spec.describe(),
        output.display()
    );
    let bars = (std::io::stderr().is_terminal() && input_bytes(&files) >= PROGRESS_MIN_BYTES)
        .then(Bars::new);
    let progress: &dyn Progress = match &bars {
        Some(bars) => bars,
        None => &NoProgress,
    };
    let summary = convert(&files, &output, &options, progress)?;
    for note in &summary.notes {
        log!("vit: {note}");
    }
    let text = match args.format {
        Format::Text => text_summary(&spec.describe(), &summary),
        Format::Json => {
            let mut json = summary.to_json();
            json["input"] = spec.describe().into();
            format!("{json}\n")
        }
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("cannot write to stdout")?;
    Ok(Outcome::Success)
}

fn text_summary(input: &str, summary: &Summary) -> String {
    let verified = match (summary.max_cast_change, &summary.int8) {
        (change, Some(int8)) => format!(
            "every tensor equal to the source in f32, the {} int8 weights to its per-channel \
             quantization (largest change {change:.2e})",
            int8.tensors
        ),
        (0.0, None) => "every tensor equal to the source".to_string(),
        (change, None) => format!(
            "every tensor equal to the source rounded to {} (largest change {change:.2e})",
            summary.dtype_label()
        ),
    };
    let shards = match summary.shards {
        1 => "1 (model.safetensors)".to_string(),
        n => format!("{n} (model.safetensors.index.json)"),
    };
    let rows = [
        ("input", input.to_string()),
        ("output", summary.output.display().to_string()),
        ("layout", summary.layout.name().to_string()),
        (
            "tensors",
            format!(
                "{} ({} in the source)",
                summary.tensors, summary.source_tensors
            ),
        ),
        ("parameters", grouped(summary.parameters as u64)),
        (
            "bytes",
            format!("{} ({})", grouped(summary.bytes), human(summary.bytes)),
        ),
        ("dtype", summary.dtype_label()),
        ("shards", shards),
        ("config", summary.config.clone()),
        ("preprocessor", summary.preprocessor.clone()),
        ("verified", verified),
    ];
    rows.iter()
        .map(|(key, value)| format!("{key:<13}{value}\n"))
        .collect()
}

/// `1234567` → `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in decimal units, as HF sizes are given: `22.9 MB`.
fn human(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", units[unit]),
    }
}

/// Inputs at least this large get progress bars (when stderr is a terminal).
const PROGRESS_MIN_BYTES: u64 = 256 << 20;

/// A conversion's progress on stderr: a spinner while the input is read, then a bar of the
/// bytes written and verified.
struct Bars {
    spinner: ProgressBar,
    bytes: ProgressBar,
}

impl Bars {
    fn new() -> Self {
        let bytes = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        bytes.set_style(
            ProgressStyle::with_template(
                "{msg:9} {bar:40} {bytes}/{total_bytes}  {bytes_per_sec}  eta {eta}",
            )
            .expect("valid progress template"),
        );
        Self {
            spinner: ProgressBar::new_spinner(),
            bytes,
        }
    }
}

impl Progress for Bars {
    fn reading(&self, path: &Path) {
        self.spinner
            .set_message(format!("reading {}", path.display()));
        self.spinner.enable_steady_tick(Duration::from_millis(120));
    }

    fn read(&self, bytes: u64) {
        self.spinner.finish_and_clear();
        self.bytes.set_length(bytes);
        self.bytes.set_draw_target(ProgressDrawTarget::stderr());
    }

    fn stage(&self, name: &'static str) {
        self.bytes.set_message(name);
    }

    fn advance(&self, bytes: u64) {
        self.bytes.inc(bytes);
    }

    fn finish(&self) {
        self.spinner.finish_and_clear();
        self.bytes.finish_and_clear();
    }
}
