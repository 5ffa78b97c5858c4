//! Converting ViT checkpoints into HF model folders (`vit convert`).
//!
//! A checkpoint in HF `ViTForImageClassification` naming or in timm `VisionTransformer`
//! naming (fused `qkv`, `blocks.N`, `pos_embed`, ...) is mapped to HF names, optionally cast,
//! and written as `model.safetensors` (sharded with an index above a size), `config.json` and
//! `preprocessor_config.json` into a temporary folder. That folder is then read back with the
//! crate's own loader and every tensor is compared with the source before the folder is
//! renamed into place.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor};
use serde_json::{json, Value};

use crate::atomic::StagedDir;
use crate::hub::ModelSpec;
use crate::model::config::{
    Head, Pooling, PosInterpolation, RotaryCoordinates, Variant, ViTConfig,
};
use crate::model::layouts::timm::{self, default_heads, timm_preprocess};
use crate::model::layouts::Layout as ModelLayout;
use crate::model::save::{save_safetensors, write_json};
use crate::model::weights::{
    canonical_state_dict, check_state_dict, expected_tensors, infer_config, read_weights_as,
    ModelFiles, StateDict,
};
use crate::preprocess::{ImageBackend, PreprocessConfig};

/// What a conversion reports as it goes (the command line shows it as progress bars); every
/// method does nothing by default.
pub trait Progress: Sync {
    /// Reading the input's weights from `path` began.
    fn reading(&self, _path: &Path) {}
    /// The input is read; `bytes` of writing and verifying follow.
    fn read(&self, _bytes: u64) {}
    /// A stage of those bytes began (`writing`, `verifying`).
    fn stage(&self, _name: &'static str) {}
    /// `bytes` more were written or verified.
    fn advance(&self, _bytes: u64) {}
    /// The conversion ended, done or failed.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}

/// Tensor naming of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// HF `ViTForImageClassification` names (`vit.encoder.layer.N.attention.attention.query`).
    Hf,
    /// timm `VisionTransformer` names (`blocks.N.attn.qkv`, `pos_embed`, `head`).
    Timm,
}

impl Layout {
    /// `hf` or `timm`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hf => "hf",
            Self::Timm => "timm",
        }
    }

    /// A tensor every checkpoint of this layout has.
    fn marker(self) -> &'static str {
        match self {
            Self::Hf => "vit.embeddings.patch_embeddings.projection.weight",
            Self::Timm => "patch_embed.proj.weight",
        }
    }
}

/// What to convert and how.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// The input's naming; `None` detects it.
    pub layout: Option<Layout>,
    /// The dtype of the written tensors; `None` keeps each tensor's own.
    pub dtype: Option<DType>,
    /// Write an int8 folder ([`crate::quantize`]): the encoder's dense weights as int8 with
    /// per-channel scales, every other tensor in f32 (`dtype` is then ignored).
    pub int8: bool,
    /// Largest shard in bytes; a bigger model is split into several files with an index.
    pub max_shard_size: u64,
    /// Attention heads for a checkpoint without an HF `config.json`.
    pub num_heads: Option<usize>,
    /// Replace an existing output folder.
    pub overwrite: bool,
}

/// What a conversion wrote, once verified.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The output folder.
    pub output: PathBuf,
    /// The input's naming.
    pub layout: Layout,
    /// Tensors read from the input (timm's fused `qkv` counts once).
    pub source_tensors: usize,
    /// Tensors written.
    pub tensors: usize,
    /// Elements of all written tensors.
    pub parameters: usize,
    /// Bytes of tensor data written (the index's `total_size`).
    pub bytes: u64,
    /// The distinct dtypes written.
    pub dtypes: Vec<DType>,
    /// Weight files written (1: `model.safetensors`, no index).
    pub shards: usize,
    /// Where `config.json` came from.
    pub config: String,
    /// Where `preprocessor_config.json` came from.
    pub preprocessor: String,
    /// Largest absolute change of any element made by the dtype cast or the int8
    /// quantization (0 when exact).
    pub max_cast_change: f64,
    /// What the int8 quantization wrote, for an int8 folder.
    pub int8: Option<crate::quantize::Quantized>,
    /// Warnings and notes for stderr (dropped tensors, assumed head count, ...).
    pub notes: Vec<String>,
}

impl Summary {
    /// The written dtypes, e.g. `bf16` or `f16+f32`.
    pub fn dtype_label(&self) -> String {
        let mut names: Vec<&str> = self.dtypes.iter().map(DType::as_str).collect();
        if self.int8.is_some() {
            names.insert(0, "int8");
        }
        names.join("+")
    }

    /// The summary as a JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "output": self.output.display().to_string(),
            "layout": self.layout.name(),
            "source_tensors": self.source_tensors,
            "tensors": self.tensors,
            "parameters": self.parameters,
            "bytes": self.bytes,
            "dtype": self.dtype_label(),
            "shards": self.shards,
            "config": self.config,
            "preprocessor": self.preprocessor,
            "max_cast_change": self.max_cast_change,
            "int8_tensors": self.int8.as_ref().map_or(0, |q| q.tensors),
            "verified": true,
        })
    }
}

/// Converts the model in `files` into an HF safetensors model folder at `output`.
///
/// Nothing appears at `output` unless the whole folder was written and verified; an existing
/// `output` is an error unless `options.overwrite`, and may not hold the input.
pub fn convert(
    files: &ModelFiles,
    output: &Path,
    options: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<Summary> {
    let summary = convert_reporting(files, output, options, progress);
    progress.finish();
    summary
}

fn convert_reporting(
    files: &ModelFiles,
    output: &Path,
    options: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<Summary> {
    ensure!(
        options.max_shard_size > 0,
        "the maximum shard size must be positive"
    );
    ensure!(
        options.num_heads != Some(0),
        "the number of heads must be positive"
    );
    refuse_input_inside_output(files, output)?;
    let config_layout = config_layout(files)?;
    refuse_image_text_models(files, config_layout)?;
    let mut notes = remove_stale_staging(output);
    let staged = StagedDir::new(output, options.overwrite)?;

    // The names of an HF folder are read in the layout its config.json names (timm's and
    // config-less checkpoints are told apart by their names below).
    let hf_layout = config_layout.filter(|layout| *layout != ModelLayout::TIMM);
    progress.reading(&files.weights);
    let source = read_weights_as(&files.weights, hf_layout.or(Some(ModelLayout::HF_VIT)))?;

    let plan = plan(files, source, options)?;
    notes.extend(plan.notes);
    let mut tensors = plan.tensors;
    let cast = match options.int8 {
        true => Some(DType::F32),
        false => options.dtype,
    };
    for (name, tensor) in tensors.iter_mut() {
        if let Some(dtype) = cast.filter(|d| *d != tensor.dtype()) {
            *tensor = tensor
                .to_dtype(dtype)
                .with_context(|| format!("tensor {name}: cannot cast to {}", dtype.as_str()))?;
        }
    }
    let order: Vec<String> = expected_tensors(&plan.config)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let bytes: u64 = tensors.values().map(tensor_bytes).sum();
    progress.read(bytes * 2);
    progress.stage("writing");
    let shards = shard(&order, &tensors, options.max_shard_size);
    // Written under the names of the HF layout the variant belongs to (ViT, DeiT, DINOv2).
    let target = ModelLayout::of_variant(&plan.config.variant)?;
    let stored = |name: &String| target.stored_name(name, &plan.config);
    let stored_shards: Vec<Vec<String>> = shards
        .iter()
        .map(|names| names.iter().map(stored).collect())
        .collect();
    let stored_tensors: StateDict = tensors
        .iter()
        .map(|(name, tensor)| (stored(name), tensor.clone()))
        .collect();
    write_weights(staged.path(), &stored_shards, &stored_tensors, progress)?;
    let mut dtypes: Vec<DType> = tensors.values().map(Tensor::dtype).collect();
    dtypes.sort_by_key(|d| d.as_str());
    dtypes.dedup();
    let uniform = match dtypes[..] {
        [only] => Some(only),
        _ => None,
    };
    let config = write_config(
        staged.path(),
        &plan.config,
        plan.config_source,
        uniform,
        cast.is_some(),
    )?;
    let preprocessor = write_preprocessor(staged.path(), &plan.preprocessor)?;
    match_permissions(staged.path(), shards.len())?;

    progress.stage("verifying");
    let max_cast_change = verify(
        staged.path(),
        &plan.config,
        plan.layout,
        &plan.source,
        &tensors,
        progress,
    )
    .with_context(|| format!("{}: verification failed", output.display()))?;
    let int8 = match options.int8 {
        false => None,
        true => Some(
            quantize_staged(staged.path(), &shards, &tensors, target)
                .with_context(|| format!("{}: int8 quantization failed", output.display()))?,
        ),
    };
    let output = staged.commit()?;
    let (bytes, max_cast_change) = match &int8 {
        Some(q) => (q.bytes, max_cast_change.max(q.max_change)),
        None => (bytes, max_cast_change),
    };

    Ok(Summary {
        output,
        layout: plan.layout,
        source_tensors: plan.source_tensors,
        tensors: tensors.len() + int8.as_ref().map_or(0, |q| q.tensors),
        parameters: tensors.values().map(Tensor::elem_count).sum(),
        bytes,
        dtypes,
        shards: shards.len(),
        config,
        preprocessor,
        max_cast_change,
        int8,
        notes,
    })
}

/// Rewrites the verified f32 folder `dir` as an int8 folder: each weights file quantized
/// ([`crate::quantize::quantize_file`]), the index's total size and `config.json`'s
/// `quantization` entry updated; then reads the weights back (dequantized, as `vit` loads
/// them) and checks them against `tensors`, the f32 weights by canonical name.
fn quantize_staged(
    dir: &Path,
    shards: &[Vec<String>],
    tensors: &StateDict,
    target: ModelLayout,
) -> Result<crate::quantize::Quantized> {
    use crate::quantize::{config_entry, is_quantized_weight, quantize_file, verify_dequantized};
    let mut total = crate::quantize::Quantized::default();
    // The scales are new tensors: the index's weight map is rebuilt from what each file holds.
    let mut weight_map = serde_json::Map::new();
    for index in 0..shards.len() {
        let file = shard_file(index, shards.len());
        let report = quantize_file(&dir.join(&file), target)?;
        total.tensors += report.tensors;
        total.elements += report.elements;
        total.bytes += report.bytes;
        total.max_change = total.max_change.max(report.max_change);
        for name in report.names {
            weight_map.insert(name, Value::from(file.as_str()));
        }
    }
    if shards.len() > 1 {
        let path = dir.join("model.safetensors.index.json");
        let mut index = read_json(&path)?;
        index["metadata"]["total_size"] = Value::from(total.bytes);
        index["weight_map"] = Value::Object(weight_map);
        write_json(&path, &index)?;
    }
    let config_path = dir.join("config.json");
    let mut config = read_json(&config_path)?;
    config["quantization"] = config_entry();
    write_json(&config_path, &config)?;
    match_permissions(dir, shards.len())?;

    let files = ModelFiles::local(dir)?;
    let mapped =
        crate::model::formats::mapped::MappedSafetensors::open(&files.weights, Some(target))?;
    let mut quantized = 0;
    for (name, tensor) in tensors {
        let read = mapped.tensor(name, DType::F32, &candle_core::Device::Cpu)?;
        let is_int8 = is_quantized_weight(name, tensor.dims());
        quantized += usize::from(is_int8);
        verify_dequantized(name, tensor, &read, is_int8)?;
    }
    ensure!(
        quantized == total.tensors && mapped.has_int8() == (quantized > 0),
        "{} int8 tensors written, {quantized} expected",
        total.tensors
    );
    Ok(total)
}

/// The default output folder: beside a local input, named after it with `-hf`
/// (`timm_vit.pth` → `timm_vit-hf`); `./NAME-hf` for a hub id `owner/NAME`.
pub fn default_output(spec: &ModelSpec) -> PathBuf {
    match spec {
        ModelSpec::Hub { id, .. } => {
            PathBuf::from(format!("{}-hf", id.rsplit('/').next().unwrap_or(id)))
        }
        ModelSpec::Local(path) => {
            let resolved;
            let path = match path.file_name() {
                Some(_) => path.as_path(),
                None => {
                    resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
                    resolved.as_path()
                }
            };
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into());
            let stem = [
                ".safetensors.index.json",
                ".bin.index.json",
                ".index.json",
                ".safetensors",
                ".bin",
                ".pth",
                ".pt",
                ".ckpt",
            ]
            .iter()
            .find_map(|ext| name.strip_suffix(ext).filter(|s| !s.is_empty()))
            .unwrap_or(&name);
            path.with_file_name(format!("{stem}-hf"))
        }
    }
}

/// Parses a size such as `5GB`, `500MB`, `1.5GiB` or `123456` (bytes). KB/MB/GB/TB are
/// powers of 1000 (as HF's `max_shard_size`), KiB/MiB/GiB/TiB powers of 1024.
pub fn parse_byte_size(text: &str) -> Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("invalid size {text:?} (expected e.g. 5GB, 500MB or 2GiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => bail!(
            "invalid size unit {other:?} in {text:?} (use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB)"
        ),
    };
    let bytes = (number * scale as f64).round();
    ensure!(
        bytes >= 1.0 && bytes < u64::MAX as f64,
        "size {text:?} must be at least one byte"
    );
    Ok(bytes as u64)
}

/// Finds the layout of `weights`: the requested one, checked, or the one its names show.
pub fn detect_layout(weights: &StateDict, requested: Option<Layout>) -> Result<Layout> {
    let found = [Layout::Hf, Layout::Timm]
        .into_iter()
        .find(|layout| weights.contains_key(layout.marker()));
    match (requested, found) {
        (None, Some(layout)) => Ok(layout),
        (Some(wanted), Some(layout)) if wanted == layout => Ok(layout),
        (Some(wanted), _) => bail!(
            "not {} ViT checkpoint: it has no tensor {} ({})",
            match wanted {
                Layout::Hf => "an HF",
                Layout::Timm => "a timm",
            },
            wanted.marker(),
            some_names(weights)
        ),
        (None, None) => bail!(
            "unknown checkpoint layout, neither HF ViT nor timm ViT names ({})",
            some_names(weights)
        ),
    }
}

/// A few of the tensor names, for errors: `saw 3 tensors: a, b, c`.
fn some_names(weights: &StateDict) -> String {
    let mut names: Vec<&str> = weights.keys().map(String::as_str).collect();
    names.sort_unstable();
    let shown = names.len().min(6);
    let more = match names.len() - shown {
        0 => String::new(),
        n => format!(", ... ({n} more)"),
    };
    format!(
        "saw {} tensors: {}{more}",
        names.len(),
        names[..shown].join(", ")
    )
}

/// The source tensor `name` rebuilt from HF-named `written` tensors (the inverse mapping).
fn rebuild_source(written: &StateDict, layout: Layout, name: &str) -> Result<Tensor> {
    let get = |hf: &str| {
        written
            .get(hf)
            .cloned()
            .with_context(|| format!("tensor {hf} (from {name}) is missing"))
    };
    match (layout, name) {
        (Layout::Hf, _) => get(name),
        (Layout::Timm, _) => match timm::fused_parts(name) {
            Some(parts) => {
                let parts = parts
                    .iter()
                    .map(|part| get(part))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&parts, 0)?)
            }
            None => {
                get(&timm::canonical_name(name).with_context(|| format!("{name}: no HF name"))?)
            }
        },
    }
}

/// Where the written `config.json` comes from.
#[derive(Debug, Clone)]
enum ConfigSource {
    /// An HF `config.json`, copied (with its dtype updated).
    Copied(PathBuf),
    /// Inferred from the tensor shapes.
    Inferred(String),
}

/// The converted model before it is written.
struct Plan {
    layout: Layout,
    /// The input's tensors as read (names normalized) that are converted, for verification.
    source: StateDict,
    /// How many tensors the input has.
    source_tensors: usize,
    /// The HF-named tensors to write, in the source dtype.
    tensors: StateDict,
    config: ViTConfig,
    config_source: ConfigSource,
    preprocessor: Preprocessor,
    notes: Vec<String>,
}

/// Where the written `preprocessor_config.json` comes from.
enum Preprocessor {
    Copied(PathBuf),
    Made(PreprocessConfig, String),
}

/// Tensors HF's ViT models may carry that the classifier does not use; dropped with a note.
const DROPPABLE: [&str; 2] = ["vit.pooler.", "vit.embeddings.mask_token"];

fn plan(files: &ModelFiles, source: StateDict, options: &ConvertOptions) -> Result<Plan> {
    let in_weights = || files.weights.display().to_string();
    let layout = detect_layout(&source, options.layout).with_context(in_weights)?;
    let mut tensors = match layout {
        Layout::Hf => source.clone(),
        Layout::Timm => {
            canonical_state_dict(source.clone(), ModelLayout::TIMM).with_context(in_weights)?
        }
    };
    let mut notes = Vec::new();
    let timm_config = match (layout, &files.config) {
        (Layout::Timm, Some(path)) => Some(read_json(path)?),
        _ => None,
    };
    let (config, config_source) = match (layout, &files.config) {
        (Layout::Hf, Some(path)) => {
            if options.num_heads.is_some() {
                notes.push(format!(
                    "note: --num-heads ignored, {} gives the architecture",
                    path.display()
                ));
            }
            (
                ViTConfig::from_file(path)?,
                ConfigSource::Copied(path.clone()),
            )
        }
        (Layout::Timm, _) => {
            let config = timm_config_for_hf(&tensors, timm_config.as_ref(), options, &mut notes)
                .with_context(in_weights)?;

            let how = format!(
                "read off the timm tensors ({} heads, eps {:e})",
                config.num_attention_heads, config.layer_norm_eps
            );
            (config, ConfigSource::Inferred(how))
        }
        (Layout::Hf, None) => {
            let config = inferred_config(&tensors, options, &mut notes).with_context(in_weights)?;
            let how = format!(
                "inferred from shapes ({} heads, eps {:e})",
                config.num_attention_heads, config.layer_norm_eps
            );
            (config, ConfigSource::Inferred(how))
        }
    };
    let unused = check_state_dict(&tensors, &config).with_context(in_weights)?;
    for name in unused {
        ensure!(
            DROPPABLE.iter().any(|prefix| name.starts_with(prefix)),
            "{}: tensor {name} is not part of the model with this config",
            in_weights()
        );
        notes.push(format!(
            "warning: dropping tensor {name} (not used by the model)"
        ));
        tensors.remove(&name);
    }
    for (name, tensor) in &tensors {
        ensure!(
            matches!(
                tensor.dtype(),
                DType::F64 | DType::F32 | DType::F16 | DType::BF16
            ),
            "{}: tensor {name} has dtype {}, expected f64, f32, f16 or bf16",
            in_weights(),
            tensor.dtype().as_str()
        );
    }
    let preprocessor = match (&files.preprocessor, layout) {
        (Some(path), _) => {
            PreprocessConfig::from_file(path)?;
            Preprocessor::Copied(path.clone())
        }
        (None, Layout::Timm) => {
            let pretrained = timm_config.as_ref().and_then(|c| c.get("pretrained_cfg"));
            let (made, how) =
                timm_preprocess(pretrained, config.image_size, ImageBackend::HfTorchvision)?;
            Preprocessor::Made(made, how)
        }
        (None, Layout::Hf) if config.variant.rotary.is_some() => Preprocessor::Made(
            PreprocessConfig::dinov3().with_input_size(config.image_size as u32),
            "HF DINOv3ViTImageProcessor defaults (rescale, bilinear resize, ImageNet mean/std)"
                .into(),
        ),
        (None, Layout::Hf) => Preprocessor::Made(
            PreprocessConfig::default().with_input_size(config.image_size as u32),
            "HF ViTImageProcessor defaults (bilinear resize, mean/std 0.5)".into(),
        ),
    };
    let source_tensors = source.len();
    let source = match layout {
        Layout::Hf => source
            .into_iter()
            .filter(|(name, _)| tensors.contains_key(name))
            .collect(),
        Layout::Timm => source,
    };
    Ok(Plan {
        layout,
        source,
        source_tensors,
        tensors,
        config,
        config_source,
        preprocessor,
        notes,
    })
}

/// The architecture of an HF-named checkpoint without a config: shapes. Heads cannot be seen
/// in shapes: `--num-heads`, else 16 for the ViT-H/g/G widths, else hidden size / 64.
fn inferred_config(
    tensors: &StateDict,
    options: &ConvertOptions,
    notes: &mut Vec<String>,
) -> Result<ViTConfig> {
    let hidden = tensors
        .get(Layout::Hf.marker())
        .and_then(|t| t.dims().first().copied())
        .unwrap_or(0);
    let heads = options.num_heads.unwrap_or_else(|| {
        let heads = default_heads(hidden);
        notes.push(assumed_heads_note(heads, hidden));
        heads
    });
    infer_config(tensors, Some(heads))
}

fn assumed_heads_note(heads: usize, hidden: usize) -> String {
    format!(
        "note: assuming {heads} attention heads for hidden size {hidden} (the checkpoint does \
         not say); pass --num-heads if the model has another count"
    )
}

/// The architecture of a timm checkpoint (canonical `tensors`, its `config.json` if any),
/// set to resize positions as the HF layout it is written in does; an error naming the
/// variant when no HF layout of the family holds it.
fn timm_config_for_hf(
    tensors: &StateDict,
    timm_config: Option<&Value>,
    options: &ConvertOptions,
    notes: &mut Vec<String>,
) -> Result<ViTConfig> {
    let empty = Value::Object(Default::default());
    let json = timm_config.unwrap_or(&empty);
    let mut config = timm::config(json, tensors, options.num_heads)?;
    if let Some(rotary) = config.variant.rotary {
        let architecture = json
            .get("architecture")
            .and_then(Value::as_str)
            .unwrap_or("a rotary model");
        if rotary.coordinates != RotaryCoordinates::NormalizedCentres {
            bail!(
                "timm {architecture}: HF transformers has no layout for timm's rotary ViTs \
                 (EVA-02, RoPE-ViT): vit reads the timm folder as it is (classify, embed, bench)"
            );
        }
        dinov3_as_hf(&mut config, architecture, notes)?;
        return Ok(config);
    }
    let stated = json.pointer("/model_args/num_heads").is_some();
    if !stated && options.num_heads.is_none() {
        notes.push(assumed_heads_note(
            config.num_attention_heads,
            config.hidden_size,
        ));
    }
    let variant = &mut config.variant;
    let hf_resampling = match variant.register_tokens {
        0 => PosInterpolation::Bicubic,
        _ => PosInterpolation::BicubicAntialias,
    };
    if variant.pos_interpolation != hf_resampling {
        variant.pos_interpolation = hf_resampling;
        notes.push(
            "note: HF resizes position embeddings without antialiasing where timm uses it: \
             at input sizes other than the model's, outputs differ slightly"
                .into(),
        );
    }
    ModelLayout::of_variant(&config.variant)?;
    Ok(config)
}

/// A timm DINOv3 backbone as HF's `DINOv3ViTModel` holds it: the same tensors; the options
/// that only matter to absolute positions, which it has none of, as HF's; the class token
/// as its pooled output (`pooler_output`) where timm pooled the patch mean. timm's DINOv3
/// classifiers (a head on the patch mean) have no HF counterpart.
fn dinov3_as_hf(config: &mut ViTConfig, architecture: &str, notes: &mut Vec<String>) -> Result<()> {
    let variant = &mut config.variant;
    let plain = Variant::default();
    variant.class_positions = plain.class_positions;
    variant.register_positions = plain.register_positions;
    variant.pos_interpolation = plain.pos_interpolation;
    if variant.head != Head::None {
        bail!(
            "timm {architecture}: a DINOv3 classifier with timm's head (on the {:?} pooling) \
             has no HF counterpart: vit reads the timm folder as it is",
            variant.pooling
        );
    }
    if variant.pooling != Pooling::Class {
        notes.push(format!(
            "note: HF's DINOv3ViTModel pools the class token (pooler_output), where timm's \
             {architecture} pooled {:?}: `vit embed --pool mean` gives timm's patch mean",
            variant.pooling
        ));
        variant.pooling = Pooling::Class;
    }
    ModelLayout::of_variant(variant)?;
    Ok(())
}

/// Groups tensor names (in `order`) into shards of at most `max_bytes` each, as HF does: a
/// new shard starts when the next tensor would not fit; a tensor larger than the limit gets
/// a shard of its own.
fn shard(order: &[String], tensors: &StateDict, max_bytes: u64) -> Vec<Vec<String>> {
    let mut shards: Vec<Vec<String>> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut size = 0u64;
    for name in order.iter().filter(|n| tensors.contains_key(*n)) {
        let bytes = tensor_bytes(&tensors[name]);
        if !current.is_empty() && size + bytes > max_bytes {
            shards.push(std::mem::take(&mut current));
            size = 0;
        }
        current.push(name.clone());
        size += bytes;
    }
    if !current.is_empty() || shards.is_empty() {
        shards.push(current);
    }
    shards
}

/// The file name of shard `index` (0-based) of `count`.
fn shard_file(index: usize, count: usize) -> String {
    match count {
        1 => "model.safetensors".into(),
        _ => format!("model-{:05}-of-{count:05}.safetensors", index + 1),
    }
}

/// Writes the shards, and `model.safetensors.index.json` when there are several.
fn write_weights(
    dir: &Path,
    shards: &[Vec<String>],
    tensors: &StateDict,
    progress: &dyn Progress,
) -> Result<()> {
    let mut weight_map = BTreeMap::new();
    for (index, names) in shards.iter().enumerate() {
        let file = shard_file(index, shards.len());
        let part: HashMap<String, Tensor> = names
            .iter()
            .map(|name| (name.clone(), tensors[name].clone()))
            .collect();
        save_safetensors(&dir.join(&file), &part)?;
        progress.advance(part.values().map(tensor_bytes).sum());
        for name in names {
            weight_map.insert(name.clone(), Value::from(file.as_str()));
        }
    }
    if shards.len() > 1 {
        let total: u64 = tensors.values().map(tensor_bytes).sum();
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
    }
    Ok(())
}

/// HF's name of a dtype in `config.json` (`float32`, `bfloat16`, ...).
fn hf_dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F64 => "float64",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// Writes `config.json`: the source's, copied as is unless its `dtype`/`torch_dtype` entry
/// disagrees with the written dtype (or a cast was asked for and it has none), in which case
/// that entry is set; or an inferred one.
fn write_config(
    dir: &Path,
    config: &ViTConfig,
    source: ConfigSource,
    written: Option<DType>,
    cast: bool,
) -> Result<String> {
    let target = dir.join("config.json");
    let dtype_name = written.map(hf_dtype_name);
    match (source, dtype_name) {
        (ConfigSource::Copied(path), Some(name)) => {
            let mut json = read_json(&path)?;
            let mut keys: Vec<&str> = ["dtype", "torch_dtype"]
                .into_iter()
                .filter(|k| json.get(k).is_some())
                .collect();
            if keys.is_empty() && cast {
                keys.push("dtype");
            }
            if keys.iter().all(|k| json.get(k) == Some(&Value::from(name))) {
                return copy_file(&path, &target);
            }
            for key in keys {
                json[key] = Value::from(name);
            }
            write_json(&target, &json)?;
            Ok(format!(
                "copied from {}, dtype set to {name}",
                path.display()
            ))
        }
        (ConfigSource::Copied(path), None) => copy_file(&path, &target),
        (ConfigSource::Inferred(how), _) => {
            let mut json = config.to_hf_json(None)?;
            if let Some(name) = dtype_name {
                json["dtype"] = Value::from(name);
            }
            write_json(&target, &json)?;
            Ok(how)
        }
    }
}

/// Copies the content of `source` to `target` (a new file, permissions from the umask, not
/// from `source`); returns `copied from SOURCE`.
fn copy_file(source: &Path, target: &Path) -> Result<String> {
    let bytes =
        std::fs::read(source).with_context(|| format!("{}: cannot read", source.display()))?;
    std::fs::write(target, bytes).with_context(|| format!("{}: cannot write", target.display()))?;
    Ok(format!("copied from {}", source.display()))
}

/// `save_safetensors` writes through a private temporary file (mode 0600 on Unix): gives the
/// shards the permissions of the folder's `config.json`, which follow the umask.
fn match_permissions(dir: &Path, shards: usize) -> Result<()> {
    let config = dir.join("config.json");
    let permissions = std::fs::metadata(&config)
        .with_context(|| format!("{}: cannot read", config.display()))?
        .permissions();
    for index in 0..shards {
        let path = dir.join(shard_file(index, shards));
        std::fs::set_permissions(&path, permissions.clone())
            .with_context(|| format!("{}: cannot set permissions", path.display()))?;
    }
    Ok(())
}

fn write_preprocessor(dir: &Path, preprocessor: &Preprocessor) -> Result<String> {
    let target = dir.join("preprocessor_config.json");
    match preprocessor {
        Preprocessor::Copied(path) => copy_file(path, &target),
        Preprocessor::Made(config, how) => {
            write_json(&target, &config.to_hf_json())?;
            Ok(how.clone())
        }
    }
}

/// Reads the written folder back with the crate's loader and checks it: the config and
/// preprocessor parse, the tensors are exactly those of `config` in the intended dtypes, and
/// every source tensor, rebuilt from the written ones, equals the source, or its cast (bit for
/// bit, and within half a unit in the last place). Returns the largest change made by a cast.
fn verify(
    dir: &Path,
    config: &ViTConfig,
    layout: Layout,
    source: &StateDict,
    intended: &StateDict,
    progress: &dyn Progress,
) -> Result<f64> {
    let files = ModelFiles::local(dir)?;
    let config_path = files.config.context("config.json was not written")?;
    let read_config = ViTConfig::from_file(&config_path)?;
    ensure!(
        read_config == *config,
        "config.json reads back as {read_config:?}, not {config:?}"
    );
    let preprocessor = files
        .preprocessor
        .context("preprocessor_config.json was not written")?;
    PreprocessConfig::from_file(&preprocessor)?;
    let target = ModelLayout::of_variant(&config.variant)?;
    let written = read_weights_as(&files.weights, Some(target))?;
    let unused = check_state_dict(&written, config)?;
    ensure!(unused.is_empty(), "unexpected tensors {unused:?}");
    for (name, tensor) in &written {
        let want = intended[name].dtype();
        ensure!(
            tensor.dtype() == want,
            "tensor {name} reads back as {}, not {}",
            tensor.dtype().as_str(),
            want.as_str()
        );
    }
    let mut names: Vec<&String> = source.keys().collect();
    names.sort_unstable();
    let mut max_change = 0f64;
    for name in names {
        let rebuilt = rebuild_source(&written, layout, name)?;
        let change = compare_cast(name, &source[name], &rebuilt)?;
        max_change = max_change.max(change);
        progress.advance(tensor_bytes(&rebuilt));
    }
    Ok(max_change)
}

/// Checks that `written` is `source` rounded to `written`'s dtype: bit for bit what the cast
/// gives, and no further from the source than half a unit in the last place of that dtype
/// (an overflow to infinity fails). Returns the largest absolute change.
pub fn compare_cast(name: &str, source: &Tensor, written: &Tensor) -> Result<f64> {
    ensure!(
        source.dims() == written.dims(),
        "tensor {name} has shape {:?}, the source {:?}",
        written.dims(),
        source.dims()
    );
    let as_f64 = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
    };
    let dtype = written.dtype();
    let s = as_f64(source)?;
    let w = as_f64(written)?;
    let expected = as_f64(&source.to_dtype(dtype)?)?;
    let (precision_bits, tiniest_half_step) = match dtype {
        DType::F16 => (11, 2f64.powi(-25)),
        DType::BF16 => (8, 2f64.powi(-134)),
        DType::F32 => (24, 2f64.powi(-150)),
        _ => (53, 0.0),
    };
    let relative = 2f64.powi(-precision_bits);
    let mut max_change = 0f64;
    for (i, ((&s, &w), &e)) in s.iter().zip(&w).zip(&expected).enumerate() {
        let same = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        ensure!(
            same(w, e),
            "tensor {name}: element {i} is {w:e} in the output, {e:e} expected ({s:e} in the source)"
        );
        let change = (w - s).abs();
        let allowed = (s.abs() * relative).max(tiniest_half_step);
        ensure!(
            same(w, s) || change <= allowed,
            "tensor {name}: element {i} changes from {s:e} to {w:e} when cast to {}, more than \
             rounding (out of range?)",
            dtype.as_str()
        );
        if change.is_finite() {
            max_change = max_change.max(change);
        }
    }
    Ok(max_change)
}

fn tensor_bytes(tensor: &Tensor) -> u64 {
    (tensor.elem_count() * tensor.dtype().size_in_bytes()) as u64
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// The layout the input's `config.json` names, if it has one (an error naming the file for
/// a `model_type` vit does not read).
fn config_layout(files: &ModelFiles) -> Result<Option<ModelLayout>> {
    let Some(path) = &files.config else {
        return Ok(None);
    };
    let layout =
        ModelLayout::of_config(&read_json(path)?).with_context(|| path.display().to_string())?;
    Ok(Some(layout))
}

/// Refuses an image-text model (CLIP, SigLIP) or a Llama 4 vision encoder, before reading its
/// weights: it is already in HF's format, and the converter writes the ViT family's
/// classifiers and backbones only.
fn refuse_image_text_models(files: &ModelFiles, layout: Option<ModelLayout>) -> Result<()> {
    let image_text = [
        ModelLayout::HF_CLIP,
        ModelLayout::HF_SIGLIP,
        ModelLayout::HF_LLAMA4,
    ];
    if let (Some(path), Some(layout)) = (&files.config, layout.filter(|l| image_text.contains(l))) {
        bail!(
            "{}: an {} model is read as it is (classify, embed, bench): `vit convert` writes \
             HF ViT, DeiT, DINOv2 and DINOv3 models from PyTorch and timm checkpoints",
            path.display(),
            layout.name()
        );
    }
    Ok(())
}

/// Refuses an output folder that is, or contains, one of the input files: replacing it would
/// destroy the input.
fn refuse_input_inside_output(files: &ModelFiles, output: &Path) -> Result<()> {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let output_forms = [
        absolute(output),
        std::fs::canonicalize(output).unwrap_or_else(|_| absolute(output)),
    ];
    let inputs = [
        Some(&files.weights),
        files.config.as_ref(),
        files.preprocessor.as_ref(),
    ];
    for input in inputs.into_iter().flatten() {
        let forms = [
            absolute(input),
            std::fs::canonicalize(input).unwrap_or_else(|_| absolute(input)),
        ];
        if forms
            .iter()
            .any(|i| output_forms.iter().any(|o| i.starts_with(o)))
        {
            bail!(
                "{}: the output folder holds the input {}; choose another output",
                output.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// Removes temporary folders left beside `output` by an interrupted conversion (Ctrl-C
/// kills the process before it can clean up): `.NAME.tmp-PID` whose process is gone.
/// Only where `/proc` tells which processes live. Returns a note per folder removed.
fn remove_stale_staging(output: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    let (Some(name), Some(parent)) = (output.file_name(), output.parent()) else {
        return notes;
    };
    if !Path::new("/proc/self").exists() {
        return notes;
    }
    let parent = match parent.as_os_str().is_empty() {
        true => Path::new("."),
        false => parent,
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return notes;
    };
    for entry in entries.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = entry_name
            .strip_prefix(&prefix)
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let path = entry.path();
            if std::fs::remove_dir_all(&path).is_ok() {
                notes.push(format!(
                    "note: removed {}, left by an interrupted run",
                    path.display()
                ));
            }
        }
    }
    notes
}

/// Size of the input weights on disk (all shards of an index).
pub fn input_bytes(files: &ModelFiles) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let is_index = files.weights.to_string_lossy().ends_with(".index.json");
    let Some(folder) = files.weights.parent().filter(|_| is_index) else {
        return size(&files.weights);
    };
    let shards: BTreeSet<String> = read_json(&files.weights)
        .ok()
        .and_then(|index| index.get("weight_map").cloned())
        .and_then(|map| map.as_object().cloned())
        .map(|map| {
            map.values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    shards.iter().map(|s| size(&folder.join(s))).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tensor(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::arange(0f32, n as f32, &Device::Cpu)
            .unwrap()
            .reshape(shape)
            .unwrap()
    }

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        assert_eq!(parse_byte_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_byte_size("500mb").unwrap(), 500_000_000);
        assert_eq!(parse_byte_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_byte_size("1.5KB").unwrap(), 1500);
        assert_eq!(parse_byte_size("123").unwrap(), 123);
        assert_eq!(parse_byte_size("20 KiB").unwrap(), 20 * 1024);
        for bad in ["", "GB", "5XB", "0", "-1MB", "1..2GB"] {
            assert!(parse_byte_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn default_output_is_beside_the_input_named_after_it() {
        let local = |p: &str| default_output(&ModelSpec::Local(PathBuf::from(p)));
        assert_eq!(local("a/b/timm_vit.pth"), PathBuf::from("a/b/timm_vit-hf"));
        assert_eq!(local("x.safetensors"), PathBuf::from("x-hf"));
        assert_eq!(
            local("m/model.safetensors.index.json"),
            PathBuf::from("m/model-hf")
        );
        assert_eq!(local("models/deit/"), PathBuf::from("models/deit-hf"));
        let hub = ModelSpec::Hub {
            id: "google/vit-base-patch16-224".into(),
            revision: "main".into(),
        };
        assert_eq!(
            default_output(&hub),
            PathBuf::from("vit-base-patch16-224-hf")
        );
        let cwd = std::env::current_dir().unwrap();
        let expected =
            cwd.with_file_name(format!("{}-hf", cwd.file_name().unwrap().to_string_lossy()));
        assert_eq!(local("."), expected);
    }

    #[test]
    fn timm_names_map_to_hf_names_and_qkv_splits_in_order() {
        let weights: StateDict = [
            ("blocks.3.attn.qkv.weight".to_string(), tensor(&[6, 2])),
            ("blocks.3.attn.qkv.bias".to_string(), tensor(&[6])),
            ("blocks.3.mlp.fc2.bias".to_string(), tensor(&[2])),
            ("pos_embed".to_string(), tensor(&[1, 5, 2])),
            ("head.weight".to_string(), tensor(&[3, 2])),
        ]
        .into();
        let mapped = canonical_state_dict(weights.clone(), ModelLayout::TIMM).unwrap();
        let key = |part: &str| {
            mapped[&format!("vit.encoder.layer.3.attention.attention.{part}.weight")]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(key("query"), [0., 1., 2., 3.]);
        assert_eq!(key("key"), [4., 5., 6., 7.]);
        assert_eq!(key("value"), [8., 9., 10., 11.]);
        assert!(mapped.contains_key("vit.encoder.layer.3.attention.attention.value.bias"));
        assert!(mapped.contains_key("vit.encoder.layer.3.output.dense.bias"));
        assert!(mapped.contains_key("vit.embeddings.position_embeddings"));
        assert!(mapped.contains_key("classifier.weight"));
        assert_eq!(mapped.len(), 9);
        for name in weights.keys() {
            let rebuilt = rebuild_source(&mapped, Layout::Timm, name).unwrap();
            assert_eq!(compare_cast(name, &weights[name], &rebuilt).unwrap(), 0.0);
        }
    }

    #[test]
    fn timm_variants_without_an_hf_counterpart_are_refused_by_name() {
        // DeiT III: no_embed_class with layer scale; neither HF DeiT nor DINOv2 holds it.
        let weights: StateDict = [
            ("cls_token".to_string(), tensor(&[1, 1, 2])),
            ("pos_embed".to_string(), tensor(&[1, 4, 2])),
            ("patch_embed.proj.weight".to_string(), tensor(&[2, 3, 4, 4])),
            ("blocks.0.norm1.weight".to_string(), tensor(&[2])),
            ("blocks.0.mlp.fc1.weight".to_string(), tensor(&[4, 2])),
            ("blocks.0.attn.qkv.weight".to_string(), tensor(&[6, 2])),
            ("blocks.0.ls1.gamma".to_string(), tensor(&[2])),
            ("head.weight".to_string(), tensor(&[3, 2])),
        ]
        .into();
        let tensors = canonical_state_dict(weights, ModelLayout::TIMM).unwrap();
        let options = ConvertOptions {
            layout: None,
            dtype: None,
            int8: false,
            max_shard_size: 1 << 30,
            num_heads: Some(1),
            overwrite: false,
        };
        let err = timm_config_for_hf(&tensors, None, &options, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no HF counterpart") && err.contains("no_embed_class"),
            "{err}"
        );
        let bad_qkv: StateDict = [("blocks.0.attn.qkv.weight".to_string(), tensor(&[4, 2]))].into();
        let err = canonical_state_dict(bad_qkv, ModelLayout::TIMM)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blocks.0.attn.qkv.weight has shape [4, 2]"),
            "{err}"
        );
    }

    #[test]
    fn layouts_are_detected_or_refused_with_some_names() {
        let t = || tensor(&[1]);
        let hf: StateDict = [(Layout::Hf.marker().to_string(), t())].into();
        let timm: StateDict = [(Layout::Timm.marker().to_string(), t())].into();
        assert_eq!(detect_layout(&hf, None).unwrap(), Layout::Hf);
        assert_eq!(detect_layout(&timm, None).unwrap(), Layout::Timm);
        assert_eq!(
            detect_layout(&timm, Some(Layout::Timm)).unwrap(),
            Layout::Timm
        );
        let err = detect_layout(&timm, Some(Layout::Hf))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("not an HF ViT checkpoint"), "{err}");
        let other: StateDict = (0..8).map(|i| (format!("encoder.w{i}"), t())).collect();
        let err = detect_layout(&other, None).unwrap_err().to_string();
        assert!(err.contains("unknown checkpoint layout"), "{err}");
        assert!(
            err.contains("saw 8 tensors: encoder.w0, encoder.w1, encoder.w2, encoder.w3, encoder.w4, encoder.w5, ... (2 more)"),
            "{err}"
        );
    }

    #[test]
    fn shards_follow_the_limit_like_hf() {
        let tensors: StateDict = [
            ("a".to_string(), tensor(&[10])),
            ("b".to_string(), tensor(&[10])),
            ("c".to_string(), tensor(&[30])),
            ("d".to_string(), tensor(&[5])),
        ]
        .into();
        let order: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        assert_eq!(
            shard(&order, &tensors, 80),
            [vec!["a", "b"], vec!["c"], vec!["d"]]
        );
        assert_eq!(shard(&order, &tensors, 1 << 20), [vec!["a", "b", "c", "d"]]);
        assert_eq!(shard_file(0, 1), "model.safetensors");
        assert_eq!(shard_file(1, 3), "model-00002-of-00003.safetensors");
    }

    #[test]
    fn casts_are_checked_bit_for_bit_and_against_rounding() {
        let source =
            Tensor::new(&[1.0f32, 1.0 + 1e-3, -3.3e-6, 65504.0, 1e-30], &Device::Cpu).unwrap();
        // f16: 1.001 moves most (to 1 + 2^-10); bf16: 65504 becomes 65536.
        for (dtype, largest) in [(DType::F16, 2.3484e-5), (DType::BF16, 32.0)] {
            let cast = source.to_dtype(dtype).unwrap();
            let change = compare_cast("t", &source, &cast).unwrap();
            assert!((change / largest - 1.0).abs() < 1e-3, "{dtype:?}: {change}");
        }
        let wrong = Tensor::new(&[1.0f32, 1.0, -3.3e-6, 65504.0, 1e-30], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let err = compare_cast("t", &source, &wrong).unwrap_err().to_string();
        assert!(err.contains("element 1"), "{err}");
        let huge = Tensor::new(&[1e6f32], &Device::Cpu).unwrap();
        let err = compare_cast("t", &huge, &huge.to_dtype(DType::F16).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than rounding"), "{err}");
        assert_eq!(compare_cast("t", &source, &source).unwrap(), 0.0);
    }

    #[test]
    fn head_counts_default_to_64_wide_heads_except_known_widths() {
        assert_eq!(default_heads(768), 12);
        assert_eq!(default_heads(192), 3);
        assert_eq!(default_heads(1280), 16);
        assert_eq!(default_heads(48), 1);
    }
}
