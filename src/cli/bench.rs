//! `vit bench`: throughput, latency percentiles, achieved FLOP/s and memory, per dtype,
//! attention kernel and batch size; or the whole `classify` path on real images.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde_json::json;
use vit::bench::{
    compare_kernels, dense_layer_gflops, device_memory_used, forward_flops, matmul_peak_gflops,
    parameter_count, peak_rss_bytes, preset_config, random_state_dict, Latency, PEAK_SIZES,
};
use vit::device::{device_name, DTypeRequest, DeviceRequest, Precision};
use vit::hub::ModelSpec;
use vit::inputs::{collect_inputs, Input};
use vit::model::{
    self, AttentionKernel, LoadOptions, LoadedModel, ModelOptions, ViTConfig, VisionTransformer,
};
use vit::preprocess::{load_rgb, PreprocessConfig};

use super::{ImageBackendArgs, Outcome};

#[derive(Args)]
pub struct BenchArgs {
    /// Benchmark a real checkpoint: hub id, model folder or weights file.
    #[arg(long, short = 'm', conflicts_with = "preset")]
    model: Option<String>,
    /// Hub revision of --model.
    #[arg(long, requires = "model")]
    revision: Option<String>,
    /// A random-weight model built from a config, no download needed (e.g.
    /// vit-base-patch16-224, vit-large-patch32-384, deit-tiny-patch16-224).
    #[arg(long, default_value = "vit-base-patch16-224")]
    preset: String,
    /// auto, cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// Comma-separated dtypes to compare (auto, f32, f16, bf16, int8).
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    dtype: Vec<DTypeRequest>,
    /// Attention kernel: standard, flash (CUDA, `flash-attn` feature) or all.
    #[arg(long, value_enum, default_value_t = AttnArg::Standard)]
    attn: AttnArg,
    /// Comma-separated batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch_sizes: Vec<usize>,
    /// Square input size [default: the model's].
    #[arg(long, value_name = "PIXELS")]
    image_size: Option<usize>,
    /// Untimed iterations before timing.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed iterations per row [default: as many as fit in --seconds].
    #[arg(long, conflicts_with = "seconds")]
    iters: Option<usize>,
    /// Time budget per row, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// CPU threads for matrix products and parallel ops [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Attention heads for a weights file without config.json.
    #[arg(long, value_name = "N")]
    num_heads: Option<usize>,
    /// Time the whole classify path (decode, resize, forward) on the images of this folder.
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
    #[command(flatten)]
    image_backend: ImageBackendArgs,
    /// Also measure vit's own matrix-product peak (GFLOP/s of 2048^3 and 4096^3 products per
    /// dtype): the ceiling of our kernel, not the machine's (`make bench-compare` measures
    /// the libraries' too).
    #[arg(long)]
    peak: bool,
    /// Also time each dense layer's product at each batch size (CPU, f32: the weight packed
    /// and the bias, activation and residual fused, as in the forward pass), in GFLOP/s.
    #[arg(long)]
    layers: bool,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AttnArg {
    Standard,
    Flash,
    /// Standard, and flash where it can run.
    All,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// An aligned table for people.
    Table,
    /// One JSON object per row, one per line.
    Json,
}

/// The checked benchmark.
struct Plan {
    source: Source,
    device: Device,
    dtypes: Vec<Precision>,
    kernels: Vec<AttentionKernel>,
    batch_sizes: Vec<usize>,
    image_size: Option<usize>,
    warmup: usize,
    budget: Budget,
    images: Option<Vec<PathBuf>>,
    format: Format,
    num_heads: Option<usize>,
    image_backend: ImageBackendArgs,
    peak: bool,
    layers: bool,
}

enum Source {
    Preset(String),
    Model(ModelSpec),
}

#[derive(Clone, Copy)]
enum Budget {
    Iterations(usize),
    Seconds(f64),
}

fn plan(args: BenchArgs) -> Result<Plan> {
    if let Some(threads) = args.threads {
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        super::set_threads(threads)?;
    }
    if args.batch_sizes.is_empty() || args.batch_sizes.contains(&0) {
        bail!("--batch-sizes must be positive");
    }
    if args.seconds <= 0.0 || args.iters == Some(0) {
        bail!("--seconds and --iters must be positive");
    }
    let source = match &args.model {
        Some(model) => Source::Model(ModelSpec::parse(model, args.revision.as_deref())?),
        None => {
            preset_config(&args.preset)?;
            Source::Preset(args.preset.clone())
        }
    };
    let chosen = args.device.open()?;
    if let Some(note) = &chosen.fallback_note {
        log!("vit: {note}");
    }
    let device = chosen.device;
    let mut dtypes: Vec<Precision> = args.dtype.iter().map(|d| d.precision(&device)).collect();
    dtypes.dedup();
    if dtypes.iter().any(|p| p.int8) && !device.is_cpu() {
        bail!(
            "--dtype int8 runs on the CPU only; this run is on {}",
            device_name(&device)
        );
    }
    if args.layers && !(device.is_cpu() && dtypes.iter().any(|p| p.dtype == DType::F32)) {
        bail!(
            "--layers times the CPU engine's f32 products; this run is {} on {}",
            dtypes
                .iter()
                .map(|d| d.name())
                .collect::<Vec<_>>()
                .join(","),
            device_name(&device)
        );
    }
    let flash_possible = cfg!(feature = "flash-attn") && device.is_cuda();
    let kernels = match args.attn {
        AttnArg::Standard => vec![AttentionKernel::Standard],
        AttnArg::Flash if !cfg!(feature = "flash-attn") => {
            bail!("--attn flash needs a vit built with `--features flash-attn` (CUDA, sm80+)")
        }
        AttnArg::Flash if !device.is_cuda() => {
            bail!(
                "--attn flash runs on CUDA only; this run is on {}",
                device_name(&device)
            )
        }
        AttnArg::Flash => vec![AttentionKernel::Flash],
        AttnArg::All if flash_possible => vec![AttentionKernel::Standard, AttentionKernel::Flash],
        AttnArg::All => {
            log!("vit: bench: flash attention is not available here; timing standard only");
            vec![AttentionKernel::Standard]
        }
    };
    let images = match &args.images {
        None => None,
        Some(dir) => {
            let found: Vec<PathBuf> = collect_inputs(std::slice::from_ref(dir))
                .into_iter()
                .map(|input| match input {
                    Input::Image(path) => Ok(path),
                    Input::Invalid(path, reason) => bail!("{}: {reason}", path.display()),
                })
                .collect::<Result<_>>()?;
            Some(found)
        }
    };
    Ok(Plan {
        source,
        device,
        dtypes,
        kernels,
        batch_sizes: args.batch_sizes,
        image_size: args.image_size,
        warmup: args.warmup,
        budget: match args.iters {
            Some(n) => Budget::Iterations(n),
            None => Budget::Seconds(args.seconds),
        },
        images,
        format: args.format,
        num_heads: args.num_heads,
        image_backend: args.image_backend,
        peak: args.peak,
        layers: args.layers,
    })
}

/// A model built for one (dtype, kernel) pair.
struct Built {
    model: VisionTransformer,
    config: ViTConfig,
    preprocess: PreprocessConfig,
    name: String,
    /// The square input its preprocessing gives (DINOv2 stores positions for 518 pixels
    /// and is fed 224), else the config's image size.
    input_size: usize,
    load_seconds: f64,
    /// What it runs in: int8 for an int8 folder on the CPU, whatever the dtype asked.
    precision: Precision,
}

fn build(plan: &Plan, precision: Precision, kernel: AttentionKernel) -> Result<Built> {
    let options = LoadOptions {
        device: plan.device.clone(),
        dtype: precision.dtype,
        num_heads: plan.num_heads,
        model: ModelOptions {
            attention: kernel,
            int8: precision.int8,
            ..Default::default()
        },
    };
    let start = Instant::now();
    let mut runs_in = precision;
    let (model, config, preprocess, name, input_size) = match &plan.source {
        Source::Preset(name) => {
            let config = preset_config(name)?;
            let weights = random_state_dict(&config, 0)?;
            let model = model::build(weights, &config, &options)?;
            let size = config.image_size;
            (
                model,
                config,
                plan.image_backend.apply(&PreprocessConfig::default())?,
                name.clone(),
                size,
            )
        }
        Source::Model(spec) => {
            let files = spec.fetch()?;
            let loaded = LoadedModel::load(&files, &options)
                .with_context(|| format!("cannot load model {}", spec.describe()))?;
            let size = match (&files.preprocessor, loaded.preprocess.output_size(640, 480)) {
                (Some(_), (height, width)) if height == width => height as usize,
                _ => loaded.config.image_size,
            };
            runs_in.int8 = loaded.int8.runs_int8();
            (
                loaded.model,
                loaded.config,
                plan.image_backend.apply(&loaded.preprocess)?,
                spec.describe(),
                size,
            )
        }
    };
    Ok(Built {
        model,
        config,
        preprocess,
        name,
        input_size,
        load_seconds: start.elapsed().as_secs_f64(),
        precision: runs_in,
    })
}

/// One measured configuration.
struct Row {
    model: String,
    params: usize,
    device: String,
    dtype: Precision,
    kernel: AttentionKernel,
    batch: usize,
    image_size: usize,
    latency: Latency,
    images_per_second: f64,
    gflops_per_image: f64,
    peak_memory: Option<u64>,
    load_seconds: f64,
    /// Shares of decode, resize/normalize and forward, in end-to-end mode.
    stages: Option<[f64; 3]>,
}

pub fn run(args: BenchArgs) -> Result<Outcome> {
    let plan = plan(args)?;
    let progress = progress_bar(plan.dtypes.len() * plan.kernels.len() * plan.batch_sizes.len());
    let mut out = std::io::stdout().lock();
    let mut printed_header = false;
    let mut refused = false;
    let mut layer_lines = Vec::new();
    if plan.peak {
        for &dtype in &plan.dtypes {
            for size in PEAK_SIZES {
                let (gflops, kernel) = matmul_peak_gflops(size, dtype, &plan.device, 3)?;
                let device = device_name(&plan.device);
                let line = json!({"matmul_peak": {"device": device, "dtype": dtype.name(), "size": size, "gflops": gflops, "kernel": kernel}});
                match plan.format {
                    Format::Json => writeln!(out, "{line}")?,
                    Format::Table => writeln!(
                        out,
                        "matmul peak ({device} {}, {size}^3, {kernel}): {gflops:.1} {}/s",
                        dtype.name(),
                        if dtype.int8 { "GOP" } else { "GFLOP" }
                    )?,
                }
            }
        }
    }
    for &dtype in &plan.dtypes {
        let reference = match plan.kernels.iter().any(|&k| k != AttentionKernel::Standard) {
            true => Some(build(&plan, dtype, AttentionKernel::Standard)?),
            false => None,
        };
        for &kernel in &plan.kernels {
            let built = build(&plan, dtype, kernel)?;
            let dtype = built.precision;
            let size = plan.image_size.unwrap_or(built.input_size);
            if let Some(reference) = reference
                .as_ref()
                .filter(|_| kernel != AttentionKernel::Standard)
            {
                let input = random_input(1, size, &plan.device)?.to_dtype(dtype.dtype)?;
                let check = compare_kernels(&reference.model, &built.model, &input, dtype.dtype)?;
                if !check.agrees {
                    progress.suspend(|| {
                        log!(
                            "vit: bench: {} attention disagrees with standard attention by {:.3e} \
                             (tolerance {:.0e} for {}); not reported",
                            kernel.name(),
                            check.max_abs_diff,
                            check.tolerance,
                            dtype.name()
                        )
                    });
                    refused = true;
                    progress.inc(plan.batch_sizes.len() as u64);
                    continue;
                }
            }
            if plan.layers && dtype.dtype == DType::F32 && kernel == AttentionKernel::Standard {
                let size = plan.image_size.unwrap_or(built.input_size);
                let tokens =
                    (size / built.config.patch_size).pow(2) + built.config.variant.prefix_tokens();
                for &batch in &plan.batch_sizes {
                    let products =
                        dense_layer_gflops(&built.config, batch * tokens, dtype.int8, 3, 0.5);
                    layer_lines.extend(products.into_iter().map(|p| (dtype, batch, p)));
                }
            }
            for &batch in &plan.batch_sizes {
                let row = match &plan.images {
                    None => time_forward(&plan, &built, kernel, dtype, batch, size, &progress)?,
                    Some(images) => {
                        time_end_to_end(&plan, &built, kernel, dtype, batch, images, &progress)?
                    }
                };
                if plan.format == Format::Table && !printed_header {
                    print_table_header(&mut out, &row)?;
                    printed_header = true;
                }
                progress.suspend(|| print_row(&mut out, &row, plan.format))?;
                progress.inc(1);
            }
        }
    }
    progress.finish_and_clear();
    for (precision, batch, product) in layer_lines {
        let (rows, k, n) = product.shape;
        match plan.format {
            Format::Json => writeln!(
                out,
                "{}",
                json!({"layer_product": {"dtype": precision.name(), "batch": batch, "layer": product.name, "rows": rows, "k": k, "n": n, "gflops": product.gflops}})
            )?,
            Format::Table => writeln!(
                out,
                "layer product ({} batch {batch}, {}: {rows}x{k}x{n}): {:.1} {}/s",
                precision.name(),
                product.name,
                product.gflops,
                if precision.int8 { "GOP" } else { "GFLOP" }
            )?,
        }
    }
    Ok(if refused {
        Outcome::PartialFailure
    } else {
        Outcome::Success
    })
}

fn random_input(batch: usize, size: usize, device: &Device) -> Result<Tensor> {
    Ok(Tensor::randn(0f32, 1.0, (batch, 3, size, size), &Device::Cpu)?.to_device(device)?)
}

/// Runs `step` for the warm-up, then times it per the budget; returns seconds per call.
fn time_loop(plan: &Plan, mut step: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..plan.warmup {
        step()?;
        plan.device.synchronize()?;
    }
    let mut samples = Vec::new();
    let started = Instant::now();
    loop {
        let start = Instant::now();
        step()?;
        plan.device.synchronize()?;
        samples.push(start.elapsed().as_secs_f64());
        let done = match plan.budget {
            Budget::Iterations(n) => samples.len() >= n,
            Budget::Seconds(s) => {
                started.elapsed() >= Duration::from_secs_f64(s) && samples.len() >= 3
            }
        };
        if done {
            return Ok(samples);
        }
    }
}

fn time_forward(
    plan: &Plan,
    built: &Built,
    kernel: AttentionKernel,
    dtype: Precision,
    batch: usize,
    size: usize,
    progress: &ProgressBar,
) -> Result<Row> {
    progress.set_message(format!("{} batch {batch}", dtype.name()));
    let input = random_input(batch, size, &plan.device)?.to_dtype(dtype.dtype)?;
    let samples = time_loop(plan, || {
        built.model.output(&input)?;
        Ok(())
    })?;
    Ok(make_row(
        plan, built, kernel, dtype, batch, size, &samples, None,
    ))
}

fn time_end_to_end(
    plan: &Plan,
    built: &Built,
    kernel: AttentionKernel,
    dtype: Precision,
    batch: usize,
    images: &[PathBuf],
    progress: &ProgressBar,
) -> Result<Row> {
    progress.set_message(format!("{} end-to-end batch {batch}", dtype.name()));
    let preprocess = match plan.image_size {
        Some(size) => built.preprocess.with_input_size(size as u32),
        None => built.preprocess.clone(),
    };
    let mut stage_seconds = [0f64; 3];
    let mut next = 0usize;
    let mut size = 0usize;
    let samples = time_loop(plan, || {
        let paths: Vec<&PathBuf> = (0..batch)
            .map(|i| &images[(next + i) % images.len()])
            .collect();
        next = (next + batch) % images.len();
        let start = Instant::now();
        let decoded: Vec<_> = paths
            .par_iter()
            .map(|p| load_rgb(p).with_context(|| format!("{}", p.display())))
            .collect::<Result<_>>()?;
        let decoded_at = Instant::now();
        let pixels: Vec<_> = decoded
            .par_iter()
            .map(|img| preprocess.pixel_values(img))
            .collect();
        let (h, w) = (pixels[0].height, pixels[0].width);
        size = h;
        // Images cut into tiles (Llama 4) run every tile.
        let rows: usize = pixels.iter().map(|p| p.tiles).sum();
        let flat: Vec<f32> = pixels.iter().flat_map(|p| p.data.iter().copied()).collect();
        let input = Tensor::from_vec(flat, (rows, 3, h, w), &plan.device)?;
        let preprocessed_at = Instant::now();
        built
            .model
            .output(&input)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        stage_seconds[0] += (decoded_at - start).as_secs_f64();
        stage_seconds[1] += (preprocessed_at - decoded_at).as_secs_f64();
        stage_seconds[2] += preprocessed_at.elapsed().as_secs_f64();
        Ok(())
    })?;
    let total: f64 = stage_seconds.iter().sum();
    let shares = stage_seconds.map(|s| s / total);
    Ok(make_row(
        plan,
        built,
        kernel,
        dtype,
        batch,
        size,
        &samples,
        Some(shares),
    ))
}

#[allow(clippy::too_many_arguments)]
fn make_row(
    plan: &Plan,
    built: &Built,
    kernel: AttentionKernel,
    dtype: Precision,
    batch: usize,
    size: usize,
    samples: &[f64],
    stages: Option<[f64; 3]>,
) -> Row {
    let latency = Latency::from_samples(samples).expect("at least one timed iteration");
    Row {
        model: built.name.clone(),
        params: parameter_count(&built.config),
        device: device_name(&plan.device),
        dtype,
        kernel,
        batch,
        image_size: size,
        latency,
        images_per_second: batch as f64 / latency.mean,
        gflops_per_image: forward_flops(&built.config, size) as f64 / 1e9,
        peak_memory: match plan.device {
            Device::Cpu => peak_rss_bytes(),
            _ => device_memory_used(&plan.device),
        },
        load_seconds: built.load_seconds,
        stages,
    }
}

fn print_table_header(out: &mut impl Write, row: &Row) -> Result<()> {
    writeln!(
        out,
        "{}: {:.1}M params, {:.2} GFLOP per {}x{} image",
        row.model,
        row.params as f64 / 1e6,
        row.gflops_per_image,
        row.image_size,
        row.image_size
    )?;
    let stages = if row.stages.is_some() {
        "  decode resize forward"
    } else {
        ""
    };
    writeln!(
        out,
        "{:<8} {:<5} {:<8} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}{stages}",
        "device",
        "dtype",
        "attn",
        "batch",
        "img/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "GFLOP/s",
        "peak MB",
        "load s"
    )?;
    Ok(())
}

fn print_row(out: &mut impl Write, row: &Row, format: Format) -> Result<()> {
    let gflops = row.gflops_per_image * row.images_per_second;
    let peak_mb = row.peak_memory.map(|b| b as f64 / 1048576.0);
    match format {
        Format::Json => {
            let mut object = json!({
                "model": row.model,
                "params": row.params,
                "device": row.device,
                "dtype": row.dtype.name(),
                "attn": row.kernel.name(),
                "batch": row.batch,
                "image_size": row.image_size,
                "images_per_sec": row.images_per_second,
                "latency_ms": {
                    "p50": row.latency.p50 * 1e3,
                    "p90": row.latency.p90 * 1e3,
                    "p99": row.latency.p99 * 1e3,
                    "mean": row.latency.mean * 1e3,
                },
                "gflop_per_image": row.gflops_per_image,
                "gflops": gflops,
                "peak_memory_bytes": row.peak_memory,
                "load_seconds": row.load_seconds,
            });
            if let Some([decode, resize, forward]) = row.stages {
                object["stage_shares"] =
                    json!({"decode": decode, "preprocess": resize, "forward": forward});
            }
            writeln!(out, "{object}")?;
        }
        Format::Table => {
            let stages = match row.stages {
                Some([d, r, f]) => format!(
                    "  {:>5.1}% {:>5.1}% {:>6.1}%",
                    d * 100.0,
                    r * 100.0,
                    f * 100.0
                ),
                None => String::new(),
            };
            writeln!(
                out,
                "{:<8} {:<5} {:<8} {:>5} {:>9.2} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9} {:>7.2}{stages}",
                row.device,
                row.dtype.name(),
                row.kernel.name(),
                row.batch,
                row.images_per_second,
                row.latency.p50 * 1e3,
                row.latency.p90 * 1e3,
                row.latency.p99 * 1e3,
                gflops,
                peak_mb.map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into()),
                row.load_seconds,
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

fn progress_bar(rows: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(rows as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} bench {pos}/{len} rows  {msg}  {elapsed}")
            .expect("valid progress template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
