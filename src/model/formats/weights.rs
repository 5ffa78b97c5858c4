//! Reading state dicts (safetensors, sharded safetensors, PyTorch pickles) and checking them
//! against the tensors a configuration needs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::pickle::{read_pytorch, RawTensor, StorageDType};
use crate::model::attention_pool::attention_pool_tensors;
use crate::model::config::{
    generic_labels, Activation, Biases, BlockConfig, Head, MlpKind, Pooling, RotaryFrequencies,
    Variant, ViTConfig,
};
use crate::model::layouts::Layout;
use crate::tokenizer::TokenizerFiles;

/// Tensors by name, on the CPU, as stored.
pub type StateDict = HashMap<String, Tensor>;

/// The canonical name and shape of every tensor the model of `cfg` has (HF ViT's names, and
/// those of the tensors other members of the family add).
pub fn expected_tensors(cfg: &ViTConfig) -> Vec<(String, Vec<usize>)> {
    let (h, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
    let variant = &cfg.variant;
    let mut tensors: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| tensors.push((name, shape));
    if variant.class_token {
        add("vit.embeddings.cls_token".into(), vec![1, 1, h]);
    }
    if variant.distillation_token {
        add("vit.embeddings.distillation_token".into(), vec![1, 1, h]);
    }
    if variant.register_tokens > 0 {
        add(
            "vit.embeddings.register_tokens".into(),
            vec![1, variant.register_tokens, h],
        );
    }
    if variant.absolute_positions {
        add(
            "vit.embeddings.position_embeddings".into(),
            vec![1, cfg.num_positions(), h],
        );
    }
    add(
        "vit.embeddings.patch_embeddings.projection.weight".into(),
        vec![h, c, p, p],
    );
    if variant.patch_bias {
        add(
            "vit.embeddings.patch_embeddings.projection.bias".into(),
            vec![h],
        );
    }
    let norm = |add: &mut dyn FnMut(String, Vec<usize>), name: &str, width: usize| {
        add(format!("{name}.weight"), vec![width]);
        add(format!("{name}.bias"), vec![width]);
    };
    if variant.norm_pre {
        norm(&mut add, "vit.pre_layernorm", h);
    }
    if variant.rotary.map(|r| r.frequencies) == Some(RotaryFrequencies::Mixed) {
        let half = cfg.head_dim() / 2;
        add(
            "vit.rope.freqs".into(),
            vec![2, cfg.num_hidden_layers, cfg.num_attention_heads, half],
        );
    }
    let block = cfg.block();
    for layer in 0..cfg.num_hidden_layers {
        for (name, shape) in layer_tensors(&format!("vit.encoder.layer.{layer}"), &block) {
            add(name, shape);
        }
    }
    if variant.final_norm {
        norm(&mut add, "vit.layernorm", h);
    }
    if variant.pooling == Pooling::AttentionPool {
        for (name, shape) in attention_pool_tensors("vit.attention_pool", &block) {
            add(name, shape);
        }
    }
    if variant.pool_norm {
        norm(&mut add, "vit.pool_layernorm", variant.pooled_width(h));
    }
    if let Some(width) = variant.projection {
        add(
            "projection.weight".into(),
            vec![width, variant.pooled_width(h)],
        );
    }
    if let Some(adapter) = variant.adapter {
        add(
            "adapter.fc1.weight".into(),
            vec![adapter.hidden, adapter.shuffled_width(h)],
        );
        add(
            "adapter.fc2.weight".into(),
            vec![adapter.output, adapter.hidden],
        );
    }
    let labels = cfg.num_labels();
    match variant.head {
        Head::None => {}
        Head::Linear => {
            add(
                "classifier.weight".into(),
                vec![labels, variant.pooled_width(h)],
            );
            add("classifier.bias".into(), vec![labels]);
        }
        Head::Distilled => {
            for name in ["classifier", "distillation_classifier"] {
                add(format!("{name}.weight"), vec![labels, h]);
                add(format!("{name}.bias"), vec![labels]);
            }
        }
    }
    tensors
}

/// Weights whose tensors can be renamed and reshaped in place: a state dict, or mapped
/// safetensors (where only the bookkeeping changes).
pub trait AdaptableWeights: TensorShapes {
    /// Tensor `from` under the name `to`, if there is one.
    fn rename(&mut self, from: &str, to: String);
    /// Tensor `name` read as `shape` (the same values in the same order).
    fn reshape(&mut self, name: &str, shape: &[usize]) -> Result<()>;
}

impl AdaptableWeights for StateDict {
    fn rename(&mut self, from: &str, to: String) {
        if let Some(tensor) = self.remove(from) {
            self.insert(to, tensor);
        }
    }

    fn reshape(&mut self, name: &str, shape: &[usize]) -> Result<()> {
        if let Some(tensor) = self.get_mut(name) {
            *tensor = tensor.reshape(shape)?;
        }
        Ok(())
    }
}

/// Gives the tensors the names `config` reads them by ([`Layout::renamed`]), and those
/// `layout` stores with merged dimensions the canonical shapes `config` expects where they
/// hold that many values ([`Layout::merged_dims`]); other tensors are left as they are (and
/// a wrong size is reported by the shape check). Only the tensors the layout names are
/// looked at before the layers are checked: the expected names grow with the config's layer
/// count, the stored ones do not.
pub fn adapt_to_config(
    weights: &mut (impl AdaptableWeights + ?Sized),
    layout: Layout,
    config: &ViTConfig,
) -> Result<()> {
    for (from, to) in layout.renamed(config) {
        weights.rename(&from, to);
    }
    if !weights.names().iter().any(|name| layout.merged_dims(name)) {
        return Ok(());
    }
    check_layers(weights, "vit.encoder.layer", config.num_hidden_layers)?;
    let count = |dims: &[usize]| dims.iter().product::<usize>();
    for (name, shape) in expected_tensors(config) {
        let Some(stored) = weights.shape(&name).filter(|_| layout.merged_dims(&name)) else {
            continue;
        };
        if count(&stored) == count(&shape) {
            weights.reshape(&name, &shape)?;
        }
    }
    Ok(())
}

/// The canonical name (under `prefix`, a layer's scope) and shape of every tensor of one
/// transformer block, for the image and text towers alike.
pub fn layer_tensors(prefix: &str, block: &BlockConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (block.hidden_size, block.intermediate_size);
    let mut tensors = Vec::new();
    let mut add = |name: &str, shape: Vec<usize>| tensors.push((format!("{prefix}.{name}"), shape));
    let mut dense = |name: &str, (in_dim, out_dim): (usize, usize), bias: bool| {
        add(&format!("{name}.weight"), vec![out_dim, in_dim]);
        if bias {
            add(&format!("{name}.bias"), vec![out_dim]);
        }
    };
    let biases = block.biases;
    dense("attention.attention.query", (h, h), biases.query);
    dense("attention.attention.key", (h, h), biases.key);
    dense("attention.attention.value", (h, h), biases.value);
    dense("attention.output.dense", (h, h), biases.output);
    match block.mlp {
        MlpKind::Standard => {
            dense("intermediate.dense", (h, i), biases.mlp);
            dense("output.dense", (i, h), biases.mlp);
        }
        MlpKind::SwiGlu => {
            dense("mlp.weights_in", (h, 2 * i), biases.mlp);
            dense("mlp.weights_out", (i, h), biases.mlp);
        }
        MlpKind::Gated => {
            dense("intermediate.gate", (h, i), biases.mlp);
            dense("intermediate.dense", (h, i), biases.mlp);
            dense("output.dense", (i, h), biases.mlp);
        }
    }
    for norm in ["layernorm_before", "layernorm_after"] {
        add(&format!("{norm}.weight"), vec![h]);
        add(&format!("{norm}.bias"), vec![h]);
    }
    if block.mlp_norm {
        add("intermediate.norm.weight", vec![i]);
        add("intermediate.norm.bias", vec![i]);
    }
    if block.layer_scale {
        add("layer_scale1.lambda1", vec![h]);
        add("layer_scale2.lambda1", vec![h]);
    }
    tensors
}

/// Checks that the first tensor of each of `count` layers under `prefix` (`vit.encoder.layer`)
/// is there, so that an absurd layer count fails at the first missing layer instead of
/// listing a billion names.
pub fn check_layers(
    weights: &(impl TensorShapes + ?Sized),
    prefix: &str,
    count: usize,
) -> Result<()> {
    for layer in 0..count {
        let name = format!("{prefix}.{layer}.layernorm_before.weight");
        if weights.shape(&name).is_none() {
            bail!("missing tensor {name} (the config has {count} layers)");
        }
    }
    Ok(())
}

/// Checks that `weights` holds every tensor of `cfg` with the right shape. Returns the names of
/// tensors the model does not use (HF warns about those and so do we).
pub fn check_state_dict(
    weights: &(impl TensorShapes + ?Sized),
    cfg: &ViTConfig,
) -> Result<Vec<String>> {
    check_model_tensors(weights, cfg, &[])
}

/// [`check_state_dict`] for a model that also has the tensors `extra` (a text tower).
pub fn check_model_tensors(
    weights: &(impl TensorShapes + ?Sized),
    cfg: &ViTConfig,
    extra: &[(String, Vec<usize>)],
) -> Result<Vec<String>> {
    check_layers(weights, "vit.encoder.layer", cfg.num_hidden_layers)?;
    let mut expected = expected_tensors(cfg);
    expected.extend_from_slice(extra);
    let mut missing = Vec::new();
    for (name, shape) in &expected {
        match weights.shape(name) {
            None => missing.push(name.as_str()),
            Some(found) if &found != shape => {
                bail!("tensor {name} has shape {found:?}, the config expects {shape:?}")
            }
            Some(_) => {}
        }
    }
    if let Some(first) = missing.first() {
        let more = match missing.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        bail!("missing tensor {first}{more}");
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut unexpected: Vec<String> = weights
        .names()
        .into_iter()
        .filter(|name| !known.contains(name.as_str()))
        .collect();
    unexpected.sort();
    Ok(unexpected)
}

/// Whether `path` names safetensors weights: a `.safetensors` file or its shard index.
pub fn is_safetensors(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json")
}

/// Reads a weights file by its extension: `.safetensors`, a shard index
/// (`model.safetensors.index.json` or `pytorch_model.bin.index.json`), or a PyTorch
/// `.bin`/`.pth`/`.pt`.
pub fn read_weights(path: &Path) -> Result<StateDict> {
    read_weights_as(path, Some(Layout::HF_VIT))
}

/// Reads a weights file as [`read_weights`] does, with the tensors renamed from `layout`'s
/// names to the canonical ones (`None`: the layout the names show).
pub fn read_weights_as(path: &Path, layout: Option<Layout>) -> Result<StateDict> {
    Ok(read_weights_in(path, layout)?.1)
}

/// [`read_weights_as`], with the layout it read.
pub fn read_weights_in(path: &Path, layout: Option<Layout>) -> Result<(Layout, StateDict)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let tensors = if name.ends_with(".index.json") {
        read_sharded(path)?
    } else {
        read_single(path)?
    };
    let (layout, renamed) = normalized_names(tensors.keys().cloned(), layout);
    Ok((layout, rename_state_dict(tensors, renamed)?))
}

/// Reads one `.safetensors` file or one PyTorch checkpoint, by its extension.
fn read_single(path: &Path) -> Result<StateDict> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name.ends_with(".safetensors") {
        read_safetensors(path)
    } else if [".bin", ".pth", ".pt", ".ckpt"]
        .iter()
        .any(|ext| name.ends_with(ext))
    {
        read_pytorch(path)?
            .into_iter()
            .map(|raw| Ok((raw.name.clone(), raw_to_tensor(raw)?)))
            .collect::<Result<StateDict>>()
            .with_context(|| format!("{}", path.display()))
    } else {
        bail!(
            "{}: unknown weights format (expected .safetensors, .bin, .pth, .pt or a .index.json)",
            path.display()
        );
    }
}

fn read_safetensors(path: &Path) -> Result<StateDict> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// A shard index: the shard files it names (each once, in name order) and which shard holds
/// each tensor.
pub(crate) struct Shards {
    pub files: Vec<PathBuf>,
    pub tensor_shards: BTreeMap<String, String>,
}

impl Shards {
    pub(crate) fn read(index_path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index_path)
            .with_context(|| format!("{}: cannot read", index_path.display()))?;
        let index: ShardIndex = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a shard index", index_path.display()))?;
        let folder = index_path.parent().unwrap_or(Path::new("."));
        let mut files: Vec<&String> = index.weight_map.values().collect();
        files.sort();
        files.dedup();
        Ok(Self {
            files: files.into_iter().map(|f| folder.join(f)).collect(),
            tensor_shards: index.weight_map,
        })
    }

    /// Checks that every tensor the index lists was found (`found`, by stored name).
    pub(crate) fn check(&self, index_path: &Path, found: impl Fn(&str) -> bool) -> Result<()> {
        for (name, shard) in &self.tensor_shards {
            if !found(name) {
                bail!(
                    "{}: tensor {name} is listed in the index but not in its shard {shard}",
                    index_path.display()
                );
            }
        }
        Ok(())
    }
}

fn read_sharded(index_path: &Path) -> Result<StateDict> {
    let shards = Shards::read(index_path)?;
    let mut tensors = StateDict::new();
    for file in &shards.files {
        tensors.extend(read_single(file)?);
    }
    shards.check(index_path, |name| tensors.contains_key(name))?;
    Ok(tensors)
}

fn raw_to_tensor(raw: RawTensor) -> Result<Tensor> {
    let dtype = match raw.dtype {
        StorageDType::F64 => DType::F64,
        StorageDType::F32 => DType::F32,
        StorageDType::F16 => DType::F16,
        StorageDType::BF16 => DType::BF16,
        StorageDType::I64 => DType::I64,
        StorageDType::U8 | StorageDType::Bool => DType::U8,
        StorageDType::I32 | StorageDType::I16 | StorageDType::I8 => {
            bail!(
                "tensor {}: integer dtype {:?} is not supported",
                raw.name,
                raw.dtype
            )
        }
    };
    Tensor::from_raw_buffer(&raw.data, dtype, &raw.shape, &Device::Cpu)
        .with_context(|| format!("tensor {}", raw.name))
}

/// One canonical tensor of a stored one: the whole of it, or rows `part` of `parts` equal
/// parts (a fused tensor split, see [`Layout::fused_parts`]), with `unit_dims` leading
/// dimensions of size 1 added where the canonical tensor has them and the stored one not
/// ([`Layout::unit_dims`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Renamed {
    pub stored: String,
    pub canonical: String,
    pub rows: Option<(usize, usize)>,
    pub unit_dims: usize,
}

/// Each of `names` as the canonical tensors it holds in `layout` (after DataParallel's
/// `module.` prefix, when every name has it, is stripped). `layout` `None` picks it by the
/// names ([`Layout::of_names`]), and the layout used is returned.
pub(crate) fn normalized_names(
    names: impl Iterator<Item = String>,
    layout: Option<Layout>,
) -> (Layout, Vec<Renamed>) {
    let names: Vec<String> = names.collect();
    let strip = !names.is_empty() && names.iter().all(|k| k.starts_with("module."));
    let unprefixed = |stored: &str| -> String {
        match strip {
            true => stored["module.".len()..].to_string(),
            false => stored.to_string(),
        }
    };
    let layout = layout.unwrap_or_else(|| {
        let bare: Vec<String> = names.iter().map(|n| unprefixed(n)).collect();
        Layout::of_names(&bare)
    });
    let mut renamed = Vec::with_capacity(names.len());
    for stored in names {
        let name = unprefixed(&stored);
        match layout.fused_parts(&name) {
            Some(parts) => {
                let count = parts.len();
                for (part, canonical) in parts.into_iter().enumerate() {
                    renamed.push(Renamed {
                        stored: stored.clone(),
                        unit_dims: layout.unit_dims(&canonical),
                        canonical,
                        rows: Some((part, count)),
                    });
                }
            }
            None => {
                let canonical = layout.canonical_name(&name);
                renamed.push(Renamed {
                    unit_dims: layout.unit_dims(&canonical),
                    canonical,
                    stored,
                    rows: None,
                })
            }
        }
    }
    (layout, renamed)
}

/// Tensors stored in `layout`'s names (DataParallel's `module.` stripped) under their
/// canonical names, fused tensors split.
pub fn canonical_state_dict(tensors: StateDict, layout: Layout) -> Result<StateDict> {
    let (_, renamed) = normalized_names(tensors.keys().cloned(), Some(layout));
    rename_state_dict(tensors, renamed)
}

/// Renames (and splits) loaded tensors to canonical names.
fn rename_state_dict(mut tensors: StateDict, renamed: Vec<Renamed>) -> Result<StateDict> {
    let mut out = StateDict::new();
    for entry in &renamed {
        let tensor = &tensors[&entry.stored];
        let tensor = match entry.rows {
            None => tensor.clone(),
            Some((part, count)) => {
                let rows = tensor.dims().first().copied().unwrap_or(0);
                if rows == 0 || rows % count != 0 {
                    bail!(
                        "tensor {} has shape {:?}: its first dimension does not split into {count}",
                        entry.stored,
                        tensor.dims()
                    );
                }
                tensor.narrow(0, part * rows / count, rows / count)?
            }
        };
        let tensor = match entry.unit_dims {
            0 => tensor,
            n => {
                let mut dims = vec![1; n];
                dims.extend_from_slice(tensor.dims());
                tensor.reshape(dims)?
            }
        };
        out.insert(entry.canonical.clone(), tensor);
    }
    tensors.clear();
    Ok(out)
}

/// Names and shapes of a set of tensors, whether loaded or only mapped.
pub trait TensorShapes {
    /// The shape of tensor `name`, if there is one.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Every tensor's name.
    fn names(&self) -> Vec<String>;
}

impl TensorShapes for StateDict {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.get(name).map(|t| t.dims().to_vec())
    }

    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

/// The number of consecutive encoder layers `shapes` holds (by canonical name), from layer 0.
pub fn count_layers(shapes: &(impl TensorShapes + ?Sized)) -> usize {
    (0..)
        .take_while(|i| {
            shapes
                .shape(&format!("vit.encoder.layer.{i}.layernorm_before.weight"))
                .is_some()
        })
        .count()
}

/// Infers the architecture of an HF-named state dict from its tensor shapes, for a weights file
/// that comes without `config.json`. Heads default to `hidden / 64` (at least 1) unless given.
pub fn infer_config(
    weights: &(impl TensorShapes + ?Sized),
    num_heads: Option<usize>,
) -> Result<ViTConfig> {
    let shape = |name: &str| -> Result<Vec<usize>> {
        weights
            .shape(name)
            .with_context(|| format!("cannot infer the config: missing tensor {name}"))
    };
    let projection = shape("vit.embeddings.patch_embeddings.projection.weight")?;
    let [hidden_size, num_channels, patch_size, _] = projection[..] else {
        bail!("tensor vit.embeddings.patch_embeddings.projection.weight has shape {projection:?}, expected 4 dimensions");
    };
    let positions = shape("vit.embeddings.position_embeddings")?;
    let patches = positions.get(1).copied().unwrap_or(1).saturating_sub(1);
    let grid = (patches as f64).sqrt().round() as usize;
    if grid * grid != patches {
        bail!("tensor vit.embeddings.position_embeddings has {patches} patch positions, not a square grid");
    }
    let num_hidden_layers = count_layers(weights);
    let intermediate = shape("vit.encoder.layer.0.intermediate.dense.weight")?;
    let classifier = shape("classifier.weight")?;
    let num_labels = classifier[0];
    let config = ViTConfig {
        hidden_size,
        num_hidden_layers,
        num_attention_heads: num_heads.unwrap_or((hidden_size / 64).max(1)),
        intermediate_size: intermediate[0],
        hidden_act: Activation::Gelu,
        layer_norm_eps: 1e-12,
        image_size: grid * patch_size,
        patch_size,
        num_channels,
        biases: Biases::with_qkv(
            weights
                .shape("vit.encoder.layer.0.attention.attention.query.bias")
                .is_some(),
        ),
        id2label: default_labels(num_labels),
        variant: Variant::default(),
    };
    config.validate()?;
    Ok(config)
}

/// ImageNet-1k class names for a 1000-class head, HF's `LABEL_i` otherwise.
pub fn default_labels(num_labels: usize) -> Vec<String> {
    if num_labels == 1000 {
        imagenet_labels()
    } else {
        generic_labels(num_labels)
    }
}

/// The 1000 ImageNet-1k class names, in index order, as HF's ImageNet checkpoints name them.
pub fn imagenet_labels() -> Vec<String> {
    include_str!("../../../assets/imagenet1k_labels.txt")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Where a model's files are on disk.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// `config.json`, when there is one.
    pub config: Option<PathBuf>,
    /// The weights: one file or a shard index.
    pub weights: PathBuf,
    /// `preprocessor_config.json`, when there is one.
    pub preprocessor: Option<PathBuf>,
    /// The tokenizer of an image-text model, when there is one.
    pub tokenizer: Option<TokenizerFiles>,
}

/// Weight files a model folder may hold, in order of preference.
pub const WEIGHT_FILES: [&str; 4] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

impl ModelFiles {
    /// The files of a local HF model folder, or of a single weights file.
    pub fn local(path: &Path) -> Result<Self> {
        if path.is_file() {
            return Ok(Self {
                config: None,
                weights: path.to_path_buf(),
                preprocessor: None,
                tokenizer: None,
            });
        }
        if !path.is_dir() {
            bail!("{}: no such file or directory", path.display());
        }
        let weights = WEIGHT_FILES
            .iter()
            .map(|name| path.join(name))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "{}: no weights found (looked for {})",
                    path.display(),
                    WEIGHT_FILES.join(", ")
                )
            })?;
        let optional = |name: &str| Some(path.join(name)).filter(|p| p.is_file());
        Ok(Self {
            config: optional("config.json"),
            weights,
            preprocessor: optional("preprocessor_config.json"),
            tokenizer: TokenizerFiles::in_folder(path),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config() -> ViTConfig {
        ViTConfig::from_json(
            r#"{"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 16, "image_size": 8, "patch_size": 4, "num_labels": 3}"#,
        )
        .unwrap()
    }

    fn zeros_for(cfg: &ViTConfig) -> StateDict {
        expected_tensors(cfg)
            .into_iter()
            .map(|(name, shape)| {
                let t = Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
                (name, t)
            })
            .collect()
    }

    #[test]
    fn a_complete_state_dict_passes_and_extra_tensors_are_reported() {
        let cfg = tiny_config();
        let mut weights = zeros_for(&cfg);
        assert!(check_state_dict(&weights, &cfg).unwrap().is_empty());
        weights.insert(
            "vit.pooler.dense.bias".into(),
            Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap(),
        );
        assert_eq!(
            check_state_dict(&weights, &cfg).unwrap(),
            vec!["vit.pooler.dense.bias"]
        );
    }

    #[test]
    fn missing_and_misshapen_tensors_are_named() {
        let cfg = tiny_config();
        let mut weights = zeros_for(&cfg);
        weights.remove("vit.encoder.layer.1.output.dense.bias");
        let err = check_state_dict(&weights, &cfg).unwrap_err().to_string();
        assert_eq!(err, "missing tensor vit.encoder.layer.1.output.dense.bias");
        let mut weights = zeros_for(&cfg);
        weights.insert(
            "classifier.weight".into(),
            Tensor::zeros((4, 8), DType::F32, &Device::Cpu).unwrap(),
        );
        let err = check_state_dict(&weights, &cfg).unwrap_err().to_string();
        assert!(err.contains("classifier.weight has shape [4, 8]"), "{err}");
        assert!(err.contains("[3, 8]"), "{err}");
    }

    #[test]
    fn config_is_inferred_from_shapes() {
        let cfg = tiny_config();
        let weights = zeros_for(&cfg);
        let inferred = infer_config(&weights, Some(2)).unwrap();
        assert_eq!(inferred.hidden_size, 8);
        assert_eq!(inferred.num_hidden_layers, 2);
        assert_eq!(inferred.intermediate_size, 16);
        assert_eq!(inferred.image_size, 8);
        assert_eq!(inferred.patch_size, 4);
        assert_eq!(inferred.num_labels(), 3);
        assert_eq!(inferred.biases, Biases::with_qkv(true));
        assert_eq!(infer_config(&weights, None).unwrap().num_attention_heads, 1);
    }

    fn normalize(dict: StateDict) -> StateDict {
        let (_, renamed) = normalized_names(dict.keys().cloned(), Some(Layout::HF_VIT));
        rename_state_dict(dict, renamed).unwrap()
    }

    #[test]
    fn module_prefix_is_stripped_and_bare_backbones_get_vit_prefix() {
        let t = || Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let dict: StateDict = [("module.classifier.bias".to_string(), t())].into();
        assert!(normalize(dict).contains_key("classifier.bias"));
        let dict: StateDict = [
            ("embeddings.cls_token".to_string(), t()),
            ("classifier.bias".to_string(), t()),
        ]
        .into();
        let dict = normalize(dict);
        assert!(dict.contains_key("vit.embeddings.cls_token"));
        assert!(dict.contains_key("classifier.bias"));
    }

    #[test]
    fn a_shard_index_may_list_pytorch_shards() {
        let dir = tempfile::tempdir().unwrap();
        let pickle = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pickle/state_dict.pt");
        let extra = Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &HashMap::from([("extra".to_string(), extra)]),
            dir.path().join("b.safetensors"),
        )
        .unwrap();
        let index = serde_json::json!({"weight_map": {
            "f32": pickle, "transposed": pickle, "extra": "b.safetensors"}});
        let index_path = dir.path().join("pytorch_model.bin.index.json");
        std::fs::write(&index_path, index.to_string()).unwrap();
        let weights = read_weights(&index_path).unwrap();
        assert_eq!(weights["transposed"].dims(), [4, 3]);
        assert_eq!(weights["extra"].to_vec1::<f32>().unwrap(), [1., 2.]);
    }

    #[test]
    fn imagenet_labels_are_complete() {
        let labels = imagenet_labels();
        assert_eq!(labels.len(), 1000);
        assert_eq!(labels[0], "tench, Tinca tinca");
        assert_eq!(labels[281], "tabby, tabby cat");
    }
}
