//! timm's `VisionTransformer` (and `VisionTransformerDistilled`) as saved to the hub by
//! `save_for_hf`: `config.json` with `architecture`, `num_classes`, `global_pool`, optional
//! `model_args` and `pretrained_cfg`; weights in timm naming (`blocks.N.attn.qkv`, fused,
//! split into query, key and value as they are read). The variant is read off the tensors
//! (class, distillation and register tokens, whether `pos_embed` covers them, `norm_pre`,
//! `ls1`/`ls2`, `fc_norm`, patch bias), the pooling from `global_pool`; heads and activation
//! from `model_args`, else from timm's registry conventions. Tensors of options this encoder
//! lacks (`qk_norm`, `attn_pool`, ...) are an error naming the option.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::CheckpointLayout;
use crate::model::config::{
    Activation, Biases, Head, MlpKind, Pooling, PosInterpolation, RotaryCoordinates,
    RotaryEmbedding, RotaryFrequencies, RotaryPairs, Variant, ViTConfig,
};
use crate::model::weights::{count_layers, default_labels, TensorShapes};
use crate::preprocess::{ImageBackend, PreprocessConfig, Resample, ResizeTarget};

/// ImageNet mean and standard deviation, as timm's `IMAGENET_DEFAULT_MEAN`/`_STD`.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Whether stored tensor names are timm's (`pos_embed`, `blocks.N...`).
pub fn has_timm_names(names: &[String]) -> bool {
    names
        .iter()
        .any(|n| n == "pos_embed" || n == "cls_token" || n.starts_with("blocks."))
}

/// The three canonical names (query, key, value) a fused `blocks.N.attn.qkv` tensor is split
/// into, along its rows.
pub fn fused_parts(stored: &str) -> Option<Vec<String>> {
    let (layer, "attn.qkv", param) = timm_block_param(stored)? else {
        return None;
    };
    Some(
        ["query", "key", "value"]
            .iter()
            .map(|part| format!("vit.encoder.layer.{layer}.attention.attention.{part}.{param}"))
            .collect(),
    )
}

/// The canonical name of a timm tensor (`qkv` aside, see [`fused_parts`]).
pub fn canonical_name(stored: &str) -> Option<String> {
    let direct = match stored {
        "dist_token" => Some("vit.embeddings.distillation_token"),
        "reg_token" => Some("vit.embeddings.register_tokens"),
        "norm_pre.weight" => Some("vit.pre_layernorm.weight"),
        "norm_pre.bias" => Some("vit.pre_layernorm.bias"),
        "fc_norm.weight" => Some("vit.pool_layernorm.weight"),
        "fc_norm.bias" => Some("vit.pool_layernorm.bias"),
        "head_dist.weight" => Some("distillation_classifier.weight"),
        "head_dist.bias" => Some("distillation_classifier.bias"),
        "rope.freqs" => Some("vit.rope.freqs"),
        _ => None,
    };
    if let Some(name) = direct {
        return Some(name.to_string());
    }
    if let Some(rest) = stored.strip_prefix("blocks.") {
        let (layer, rest) = rest.split_once('.')?;
        let scale = match rest {
            "ls1.gamma" | "gamma_1" => Some("layer_scale1.lambda1"),
            "ls2.gamma" | "gamma_2" => Some("layer_scale2.lambda1"),
            // EVA's attention: a fused qkv without bias and a bias for the query and value
            "attn.q_bias" => Some("attention.attention.query.bias"),
            "attn.v_bias" => Some("attention.attention.value.bias"),
            _ => None,
        };
        if let Some(scale) = scale {
            return Some(format!("vit.encoder.layer.{layer}.{scale}"));
        }
        if let Some((_, module, param)) = timm_block_param(stored) {
            let eva = match module {
                "attn.q_proj" => Some("attention.attention.query"),
                "attn.k_proj" => Some("attention.attention.key"),
                "attn.v_proj" => Some("attention.attention.value"),
                "mlp.fc1_g" => Some("intermediate.gate"),
                "mlp.fc1_x" => Some("intermediate.dense"),
                "mlp.norm" => Some("intermediate.norm"),
                _ => None,
            };
            if let Some(eva) = eva {
                return Some(format!("vit.encoder.layer.{layer}.{eva}.{param}"));
            }
        }
    }
    timm_to_hf_name(stored)
}

/// Options of timm's ViT that this encoder does not have, by a tensor that shows them.
const UNSUPPORTED: [(&str, &str); 7] = [
    (".attn.q_norm.", "qk_norm"),
    (".attn.k_norm.", "qk_norm"),
    ("attn_pool.", "attn_pool (global_pool='map')"),
    (".attn.norm.", "scale_attn_norm (scale_attn_inner)"),
    (".attn.gate.", "gated attention"),
    ("patch_embed.norm.", "a norm in the patch embedding"),
    ("head.fc.", "a multi-layer head"),
];

/// The rotary settings of timm's registry for a family of `Eva` models, which `config.json`
/// does not repeat (`rope_temperature`, `rope_grid_indexing`, `ref_feat_shape`).
struct RegistryRope {
    theta: f64,
    /// `rope_grid_indexing='xy'`.
    columns_first: bool,
    reference: Option<(usize, usize)>,
}

/// EVA-02 and the SBB ViTs (`vit_*_rope_reg*_gap`): patch indices rescaled to a 16 x 16 grid.
const EVA02_ROPE: RegistryRope = RegistryRope {
    theta: 10_000.0,
    columns_first: false,
    reference: Some((16, 16)),
};

/// RoPE-ViT's axial models (`vit_*_rope_224`, `vit_*_rope_ape_224`): columns first.
const ROPE_VIT_ROPE: RegistryRope = RegistryRope {
    theta: 100.0,
    columns_first: true,
    reference: None,
};

/// The rotary embeddings of an `Eva` architecture (`None` for the other timm models); its
/// `model_args` override the registry's settings. Variants this encoder lacks are refused by
/// name.
fn eva_rotary(
    architecture: &str,
    arg: &dyn Fn(&str) -> Option<Value>,
) -> Result<Option<RotaryEmbedding>> {
    let name = architecture.split('.').next().unwrap_or_default();
    let eva02 = name.starts_with("eva02_");
    let rope_vit = name.starts_with("vit_") && name.contains("_rope");
    let dinov3 = name.starts_with("vit_") && name.contains("_dinov3");
    if dinov3 {
        return dinov3_rotary(name, arg);
    }
    if !eva02 && !rope_vit {
        return Ok(None);
    }
    if name.contains("_clip_") || name.contains("enormous") {
        bail!("timm {name}: EVA-02's CLIP towers are not supported (scale_attn_inner, post-norm)");
    }
    let sbb = name.contains("_rope_reg");
    let registry = match eva02 || sbb {
        true => EVA02_ROPE,
        false => ROPE_VIT_ROPE,
    };
    let theta = rope_temperature(arg, registry.theta)?;
    let (mut columns_first, mut reference) = (registry.columns_first, registry.reference);
    if let Some(value) = arg("rope_grid_indexing") {
        columns_first = match value.as_str() {
            Some("xy") => true,
            Some("ij") => false,
            _ => bail!("model_args.rope_grid_indexing {value} is not 'ij' or 'xy'"),
        };
    }
    if let Some(value) = arg("ref_feat_shape") {
        reference = match &value {
            Value::Null => None,
            Value::Number(n) => n.as_u64().map(|n| (n as usize, n as usize)),
            Value::Array(pair) => match pair[..] {
                [Value::Number(ref h), Value::Number(ref w)] => h
                    .as_u64()
                    .zip(w.as_u64())
                    .map(|(h, w)| (h as usize, w as usize)),
                _ => None,
            },
            _ => None,
        };
        ensure!(
            value.is_null() || reference.is_some_and(|(h, w)| h > 0 && w > 0),
            "model_args.ref_feat_shape {value} is not a grid size"
        );
    }
    // RoPE-Mixed: frequencies learned per layer and head, on plain indices.
    let registry_type = match name.contains("_rope_mixed") {
        true => "mixed",
        false => "cat",
    };
    let frequencies = match arg("rope_type")
        .as_ref()
        .and_then(Value::as_str)
        .unwrap_or(registry_type)
    {
        "cat" => RotaryFrequencies::Axial,
        "mixed" => {
            reference = None;
            RotaryFrequencies::Mixed
        }
        other => bail!("timm {name}: rope_type {other:?} is not supported (cat, mixed)"),
    };
    let pairs = match arg("rope_rotate_half").as_ref().and_then(Value::as_bool) {
        Some(true) => RotaryPairs::Halves,
        _ => RotaryPairs::Adjacent,
    };
    if arg("use_rot_pos_emb").as_ref().and_then(Value::as_bool) == Some(false) {
        return Ok(None);
    }
    Ok(Some(RotaryEmbedding {
        theta,
        coordinates: RotaryCoordinates::Indices {
            offset: 0.0,
            reference,
            columns_first,
        },
        pairs,
        frequencies,
    }))
}

/// timm's DINOv3 ViTs (`vit_*_patch16_dinov3*`): HF DINOv3's rotary embeddings (patch
/// centres normalised to [-1, 1], rotate-half pairs, `rope_temperature` 100).
fn dinov3_rotary(
    name: &str,
    arg: &dyn Fn(&str) -> Option<Value>,
) -> Result<Option<RotaryEmbedding>> {
    let theta = rope_temperature(arg, 100.0)?;
    match arg("rope_type").as_ref().and_then(Value::as_str) {
        None | Some("dinov3") => {}
        Some(other) => bail!("timm {name}: rope_type {other:?} is not supported (dinov3)"),
    }
    if arg("rope_rotate_half").as_ref().and_then(Value::as_bool) == Some(false) {
        bail!("timm {name}: rope_rotate_half false is not supported for DINOv3");
    }
    Ok(Some(RotaryEmbedding::dinov3(theta)))
}

/// `model_args.rope_temperature`, else the registry's `default`.
fn rope_temperature(arg: &dyn Fn(&str) -> Option<Value>, default: f64) -> Result<f64> {
    match arg("rope_temperature") {
        Some(value) => value
            .as_f64()
            .context("model_args.rope_temperature is not a number"),
        None => Ok(default),
    }
}

/// The image size of a timm config without position embeddings to read it from:
/// `model_args.img_size`, `pretrained_cfg.input_size`, or the architecture's `_224`.
fn eva_image_size(json: &Value, architecture: &str) -> Option<usize> {
    // An int, or `[height, width]` (its width).
    let from_args = json
        .get("model_args")
        .and_then(|a| a.get("img_size"))
        .and_then(|size| size.as_array().and_then(|s| s.last()).or(Some(size)))
        .and_then(Value::as_u64);
    let from_cfg = json
        .get("pretrained_cfg")
        .and_then(|p| p.get("input_size"))
        .and_then(Value::as_array)
        .and_then(|s| s.last())
        .and_then(Value::as_u64);
    let name = architecture.split('.').next().unwrap_or_default();
    let from_name = name.rsplit('_').next().and_then(|n| n.parse::<u64>().ok());
    from_args.or(from_cfg).or(from_name).map(|n| n as usize)
}

/// The architecture of a timm checkpoint: `json` is its `config.json` (or `{}`), `shapes`
/// the tensors by canonical name; `num_heads` overrides the heads for a checkpoint without
/// `model_args`.
pub fn config(
    json: &Value,
    shapes: &(impl TensorShapes + ?Sized),
    num_heads: Option<usize>,
) -> Result<ViTConfig> {
    let names = shapes.names();
    for (pattern, option) in UNSUPPORTED {
        if let Some(name) = names.iter().find(|n| n.contains(pattern)) {
            bail!("timm option {option} is not supported (tensor {name})");
        }
    }
    let shape = |name: &str, what: &str| -> Result<Vec<usize>> {
        shapes
            .shape(name)
            .with_context(|| format!("timm checkpoint without {what}"))
    };
    let projection = shape(
        "vit.embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.weight",
    )?;
    let [hidden, channels, patch, _] = projection[..] else {
        bail!("patch_embed.proj.weight has shape {projection:?}, expected 4 dimensions");
    };
    let args = json.get("model_args");
    let arg = |key: &str| args.and_then(|a| a.get(key));
    let architecture = json
        .get("architecture")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let rotary = eva_rotary(architecture, &|key| arg(key).cloned())?;
    let absolute_positions = shapes.shape("vit.embeddings.position_embeddings").is_some();
    if !absolute_positions && rotary.is_none() {
        bail!("a timm ViT without absolute position embeddings (pos_embed) is not supported");
    }
    let class_token = shapes.shape("vit.embeddings.cls_token").is_some();
    let distillation_token = shapes.shape("vit.embeddings.distillation_token").is_some();
    let register_tokens = shapes
        .shape("vit.embeddings.register_tokens")
        .map_or(0, |s| s.get(1).copied().unwrap_or(0));
    let prefix = usize::from(class_token) + usize::from(distillation_token) + register_tokens;
    // `pos_embed` covers every prefix token, or none of them (`no_embed_class`).
    let grid_of = |patches: usize| {
        let grid = (patches as f64).sqrt().round() as usize;
        (grid * grid == patches && grid > 0).then_some(grid)
    };
    let (grid, embed_class) = match absolute_positions {
        true => {
            let positions = shape("vit.embeddings.position_embeddings", "pos_embed")?;
            let rows = positions.get(1).copied().unwrap_or(0);
            match (grid_of(rows), rows.checked_sub(prefix).and_then(grid_of)) {
                (_, Some(grid)) if prefix > 0 => (grid, true),
                (Some(grid), _) => (grid, false),
                _ => bail!(
                    "pos_embed has {rows} rows: not a square grid with or without {prefix} prefix tokens"
                ),
            }
        }
        false => {
            let size = eva_image_size(json, architecture)
                .context("a rotary timm model's config.json without its image size")?;
            (size / patch.max(1), false)
        }
    };
    let num_hidden_layers = count_layers(shapes);
    let fc1 = shape(
        "vit.encoder.layer.0.intermediate.dense.weight",
        "blocks.0.mlp.fc1.weight",
    )?[0];
    // (A missing fc2 is reported with the other missing tensors.)
    let fc2_inputs = shapes
        .shape("vit.encoder.layer.0.output.dense.weight")
        .and_then(|shape| shape.get(1).copied())
        .unwrap_or(0);
    // EVA's MLPs: SwiGLU with separate gate and value (`fc1_g`, `fc1_x`), or packed in one
    // `fc1` twice as wide as `fc2` reads (`GluMlp`: the gate first).
    let mlp = match (
        shapes
            .shape("vit.encoder.layer.0.intermediate.gate.weight")
            .is_some(),
        rotary.is_some() && fc1 == 2 * fc2_inputs,
    ) {
        (true, _) => MlpKind::Gated,
        (false, true) => MlpKind::SwiGlu,
        (false, false) => MlpKind::Standard,
    };
    let intermediate = match mlp {
        MlpKind::SwiGlu => fc2_inputs,
        _ => fc1,
    };
    let heads = match arg("num_heads").and_then(Value::as_u64) {
        Some(heads) => heads as usize,
        None => num_heads.unwrap_or_else(|| default_heads(hidden)),
    };
    let activation = match arg("act_layer").and_then(Value::as_str) {
        Some(name) => Activation::from_hf_name(name)
            .with_context(|| format!("model_args.act_layer {name:?}"))?,
        None if architecture.contains("quickgelu") => Activation::QuickGelu,
        // timm's SwiGLU and GluMlp gate with SiLU.
        None if mlp != MlpKind::Standard => Activation::Silu,
        None => Activation::Gelu,
    };
    // timm registers its CLIP towers and DINOv3 ViTs with eps 1e-5.
    let layer_norm_eps = match architecture.contains("_clip_") || architecture.contains("_dinov3") {
        true => 1e-5,
        false => 1e-6,
    };
    let global_pool = arg("global_pool")
        .or_else(|| json.get("global_pool"))
        .and_then(Value::as_str)
        .unwrap_or(if class_token { "token" } else { "avg" });
    let pooling = match global_pool {
        "token" if distillation_token => Pooling::ClassDistillationAverage,
        "token" => Pooling::Class,
        "avg" => Pooling::Mean,
        other => bail!("timm global_pool {other:?} is not supported (supported: token, avg)"),
    };
    let head = match (
        shapes.shape("classifier.weight"),
        shapes.shape("distillation_classifier.weight"),
    ) {
        (Some(_), Some(_)) => Head::Distilled,
        (Some(_), None) => Head::Linear,
        (None, _) => Head::None,
    };
    let labels = match head {
        Head::None => 0,
        _ => shape("classifier.weight", "head.weight")?[0],
    };
    let label_names = json
        .get("pretrained_cfg")
        .and_then(|c| c.get("label_names"))
        .or_else(|| json.get("label_names"))
        .and_then(Value::as_array)
        .filter(|names| names.len() == labels);
    let id2label = match label_names {
        Some(names) => names
            .iter()
            .map(|n| n.as_str().map_or_else(|| n.to_string(), str::to_string))
            .collect(),
        None if labels == 0 => Vec::new(),
        None => default_labels(labels),
    };
    let variant = Variant {
        absolute_positions,
        rotary,
        class_token,
        class_token_last: false,
        distillation_token,
        register_tokens,
        class_positions: embed_class,
        register_positions: embed_class && register_tokens > 0,
        pos_interpolation: PosInterpolation::BicubicAntialias,
        patch_bias: shapes
            .shape("vit.embeddings.patch_embeddings.projection.bias")
            .is_some(),
        norm_pre: shapes.shape("vit.pre_layernorm.weight").is_some(),
        layer_scale: shapes
            .shape("vit.encoder.layer.0.layer_scale1.lambda1")
            .is_some(),
        mlp,
        mlp_norm: shapes
            .shape("vit.encoder.layer.0.intermediate.norm.weight")
            .is_some(),
        final_norm: shapes.shape("vit.layernorm.weight").is_some(),
        pool_norm: shapes.shape("vit.pool_layernorm.weight").is_some(),
        pooling,
        head,
        projection: None,
        adapter: None,
    };
    let config = ViTConfig {
        hidden_size: hidden,
        num_hidden_layers,
        num_attention_heads: heads,
        intermediate_size: intermediate,
        hidden_act: activation,
        layer_norm_eps,
        image_size: grid * patch,
        patch_size: patch,
        num_channels: channels,
        biases: {
            let has = |name: &str| {
                let name = format!("vit.encoder.layer.0.attention.attention.{name}.bias");
                shapes.shape(&name).is_some()
            };
            // EVA's key has no bias where the query and value have one.
            Biases {
                query: has("query"),
                key: has("key"),
                value: has("value"),
                ..Biases::with_qkv(true)
            }
        },
        id2label,
        variant,
    };
    config.validate()?;
    Ok(config)
}

/// timm's eval transform of a checkpoint's `pretrained_cfg` at its `input_size` (else the
/// config's image size), with torchvision's crop rounding.
pub fn preprocess(json: &Value, config: &ViTConfig) -> Result<PreprocessConfig> {
    let pretrained = json.get("pretrained_cfg");
    let size = pretrained
        .and_then(|p| p.get("input_size"))
        .and_then(Value::as_array)
        .and_then(|s| s.last())
        .and_then(Value::as_u64)
        .map_or(config.image_size, |s| s as usize);
    Ok(timm_preprocess(pretrained, size, ImageBackend::Timm)?.0)
}

/// HF names of timm's `VisionTransformer` tensors, by timm name (`qkv` aside).
pub fn timm_to_hf_name(name: &str) -> Option<String> {
    let direct = match name {
        "cls_token" => Some("vit.embeddings.cls_token"),
        "pos_embed" => Some("vit.embeddings.position_embeddings"),
        "patch_embed.proj.weight" => Some("vit.embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias" => Some("vit.embeddings.patch_embeddings.projection.bias"),
        "norm.weight" => Some("vit.layernorm.weight"),
        "norm.bias" => Some("vit.layernorm.bias"),
        "head.weight" => Some("classifier.weight"),
        "head.bias" => Some("classifier.bias"),
        _ => None,
    };
    if let Some(hf) = direct {
        return Some(hf.to_string());
    }
    let (layer, module, param) = timm_block_param(name)?;
    let hf = match module {
        "norm1" => "layernorm_before",
        "norm2" => "layernorm_after",
        "attn.proj" => "attention.output.dense",
        "mlp.fc1" => "intermediate.dense",
        "mlp.fc2" => "output.dense",
        _ => return None,
    };
    Some(format!("vit.encoder.layer.{layer}.{hf}.{param}"))
}

/// Splits `blocks.N.MODULE.weight|bias` into its parts.
pub fn timm_block_param(name: &str) -> Option<(usize, &str, &str)> {
    let (layer, rest) = name.strip_prefix("blocks.")?.split_once('.')?;
    let (module, param) = rest.rsplit_once('.')?;
    let layer = layer.parse().ok()?;
    matches!(param, "weight" | "bias").then_some((layer, module, param))
}

/// Heads of the standard ViT widths whose heads are not 64 wide (ViT-H, ViT-g, ViT-G and
/// SoViT-400m have 16); hidden size / 64 otherwise.
pub fn default_heads(hidden: usize) -> usize {
    match hidden {
        1152 | 1280 | 1408 | 1664 => 16,
        _ => (hidden / 64).max(1),
    }
}

/// timm's evaluation transform as a preprocessing config: from a timm `pretrained_cfg` when
/// the checkpoint has one, else timm's defaults for DeiT: crop_pct 0.9, bicubic, ImageNet
/// mean/std, on `backend` ([`ImageBackend::Timm`] to run it as timm does; an HF backend to
/// write it as an HF preprocessor, whose crop HF's PIL backend places a pixel off for odd
/// margins).
pub fn timm_preprocess(
    pretrained: Option<&Value>,
    image_size: usize,
    backend: ImageBackend,
) -> Result<(PreprocessConfig, String)> {
    let get = |key: &str| pretrained.and_then(|p| p.get(key));
    let three = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
        let Some(value) = get(key) else {
            return Ok(default);
        };
        let values: Vec<f32> = value
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_f64)
                    .map(|v| v as f32)
                    .collect()
            })
            .unwrap_or_default();
        match values[..] {
            [a, b, c] => Ok([a, b, c]),
            [a] => Ok([a; 3]),
            _ => bail!("pretrained_cfg.{key} {value} is not 1 or 3 numbers"),
        }
    };
    let mean = three("mean", IMAGENET_MEAN)?;
    let std = three("std", IMAGENET_STD)?;
    let crop_pct = get("crop_pct").and_then(Value::as_f64).unwrap_or(0.9);
    ensure!(
        crop_pct > 0.0 && crop_pct <= 1.0,
        "pretrained_cfg.crop_pct {crop_pct} is not in (0, 1]"
    );
    let interpolation = get("interpolation")
        .and_then(Value::as_str)
        .unwrap_or("bicubic");
    let resample = match interpolation {
        "bicubic" => Resample::Bicubic,
        "bilinear" => Resample::Bilinear,
        "nearest" => Resample::Nearest,
        "lanczos" => Resample::Lanczos,
        "box" => Resample::Box,
        "hamming" => Resample::Hamming,
        other => bail!("pretrained_cfg.interpolation {other:?} is not supported"),
    };
    let crop = image_size as u32;
    let scaled = (image_size as f64 / crop_pct).floor() as u32;
    let resize = match get("crop_mode").and_then(Value::as_str).unwrap_or("center") {
        "center" => ResizeTarget::ShortestEdge(scaled),
        "squash" => ResizeTarget::Exact {
            height: scaled,
            width: scaled,
        },
        other => bail!("pretrained_cfg.crop_mode {other:?} is not supported"),
    };
    let origin = match pretrained {
        Some(_) => "from the timm config's pretrained_cfg",
        None => "timm defaults for DeiT: ImageNet mean/std",
    };
    let how = format!("{origin}, {interpolation} resize to {scaled}, centre crop {crop}");
    let config = PreprocessConfig {
        resize: Some(resize),
        resample,
        center_crop: Some((crop, crop)),
        backend,
        rescale_factor: Some(1.0 / 255.0),
        normalize: Some((mean, std)),
        rescale_before_resize: false,
        tiling: None,
    };
    Ok((config, how))
}

/// timm's `VisionTransformer` and `VisionTransformerDistilled`, as timm's hub repos hold them
/// (read only: `convert` writes them in their variant's HF layout).
pub struct Timm;

impl CheckpointLayout for Timm {
    fn name(&self) -> &'static str {
        "timm"
    }

    /// timm's configs have an `architecture` and no `model_type`.
    fn reads_config(&self, json: &Value) -> bool {
        json.get("model_type").is_none() && json.get("architecture").is_some()
    }

    fn reads_names(&self, names: &[String]) -> bool {
        has_timm_names(names)
    }

    fn config(
        &self,
        json: &Value,
        shapes: &dyn TensorShapes,
        num_heads: Option<usize>,
    ) -> Result<ViTConfig> {
        config(json, shapes, num_heads)
    }

    /// timm's eval transform of the config's `pretrained_cfg`; HF ViT's defaults for a
    /// checkpoint without `config.json`.
    fn default_preprocess(
        &self,
        json: Option<&Value>,
        config: &ViTConfig,
    ) -> Result<PreprocessConfig> {
        match json {
            Some(json) => preprocess(json, config),
            None => Ok(PreprocessConfig::default()),
        }
    }

    fn canonical_name(&self, stored: &str) -> Option<String> {
        canonical_name(stored)
    }

    fn fused_parts(&self, stored: &str) -> Option<Vec<String>> {
        fused_parts(stored)
    }

    /// A packed SwiGLU (`GluMlp`, EVA-02 tiny and small): `fc1` and `fc2` are its
    /// `weights_in` and `weights_out`.
    fn renamed(&self, config: &ViTConfig) -> Vec<(String, String)> {
        if config.variant.mlp != MlpKind::SwiGlu {
            return Vec::new();
        }
        let mut pairs = Vec::new();
        for layer in 0..config.num_hidden_layers {
            let scope = format!("vit.encoder.layer.{layer}");
            for (from, to) in [
                ("intermediate.dense", "mlp.weights_in"),
                ("output.dense", "mlp.weights_out"),
            ] {
                for param in ["weight", "bias"] {
                    pairs.push((
                        format!("{scope}.{from}.{param}"),
                        format!("{scope}.{to}.{param}"),
                    ));
                }
            }
        }
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timm_preprocessing_follows_pretrained_cfg_or_deit_defaults() {
        let (config, how) = timm_preprocess(None, 224, ImageBackend::HfTorchvision).unwrap();
        assert_eq!(config.resize, Some(ResizeTarget::ShortestEdge(248)));
        assert_eq!(config.center_crop, Some((224, 224)));
        assert_eq!(config.resample, Resample::Bicubic);
        assert_eq!(config.normalize, Some((IMAGENET_MEAN, IMAGENET_STD)));
        assert!(how.contains("DeiT"), "{how}");
        let cfg = json!({"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0,
                         "interpolation": "bilinear", "crop_mode": "squash"});
        let (config, _) = timm_preprocess(Some(&cfg), 384, ImageBackend::HfTorchvision).unwrap();
        assert_eq!(
            config.resize,
            Some(ResizeTarget::Exact {
                height: 384,
                width: 384
            })
        );
        assert_eq!(config.resample, Resample::Bilinear);
        assert_eq!(config.normalize, Some(([0.5; 3], [0.5; 3])));
        assert!(timm_preprocess(
            Some(&json!({"crop_pct": 0})),
            224,
            ImageBackend::HfTorchvision
        )
        .is_err());
    }

    #[test]
    fn eva_rotary_settings_follow_timms_registry_and_model_args() {
        let none = |_: &str| None;
        let eva = eva_rotary("eva02_base_patch14_448.mim_in22k_ft_in1k", &none)
            .unwrap()
            .unwrap();
        assert_eq!(eva.theta, 10_000.0);
        let RotaryCoordinates::Indices {
            reference,
            columns_first,
            ..
        } = eva.coordinates
        else {
            panic!("{eva:?}")
        };
        assert_eq!((reference, columns_first), (Some((16, 16)), false));
        let axial = eva_rotary("vit_base_patch16_rope_224", &none)
            .unwrap()
            .unwrap();
        assert_eq!(axial.theta, 100.0);
        assert!(eva_rotary("vit_base_patch16_224", &none).unwrap().is_none());
        let args = json!({"rope_temperature": 50.0, "ref_feat_shape": [8, 12]});
        let overridden = eva_rotary("eva02_tiny_patch14_224", &|k| args.get(k).cloned())
            .unwrap()
            .unwrap();
        assert_eq!(overridden.theta, 50.0);
        assert!(matches!(
            overridden.coordinates,
            RotaryCoordinates::Indices {
                reference: Some((8, 12)),
                ..
            }
        ));
        for (architecture, args, message) in [
            ("eva02_large_patch14_clip_224", json!({}), "CLIP"),
            (
                "eva02_tiny_patch14_224",
                json!({"rope_type": "dinov3"}),
                "rope_type",
            ),
            (
                "eva02_tiny_patch14_224",
                json!({"ref_feat_shape": "big"}),
                "ref_feat_shape",
            ),
        ] {
            let err = eva_rotary(architecture, &|k| args.get(k).cloned()).unwrap_err();
            assert!(err.to_string().contains(message), "{architecture}: {err}");
        }
    }
}
