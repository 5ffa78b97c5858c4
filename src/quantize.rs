//! int8 model folders: an HF safetensors folder whose encoder dense-layer weights are stored
//! as int8 with one f32 scale per output channel.
//!
//! Layout (README, "int8 model folders"):
//! - each quantized weight `NAME` (`...encoder.layer.N....weight`, 2-D: query, key, value,
//!   attention output, MLP in and out) is an `I8` tensor of the same shape, and `NAME_scale`
//!   beside it an `F32` tensor of one value per output channel (row): `W[r][c] ≈
//!   NAME_scale[r] * NAME[r][c]`, symmetric, codes in `[-127, 127]`;
//! - every other tensor (embeddings, norms, biases, the head) is f32;
//! - `config.json` holds `"quantization": {"quant_method": "int8", ...}` ([`config_entry`]).
//!
//! `vit` loads such a folder as int8 on the CPU (activations quantized per row as each
//! product runs) and dequantizes it elsewhere.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, View};
use serde_json::{json, Value};

use crate::kernels::int8::quantize::quantize_channel;
use crate::model::Layout;

/// The suffix of a quantized weight's scales.
pub const SCALE_SUFFIX: &str = "_scale";

/// Whether the tensor of canonical name `name` and `shape` is quantized in an int8 folder: a 2-D weight of an
/// encoder layer (the dense layers; norms, layer scales and biases are 1-D).
pub fn is_quantized_weight(name: &str, shape: &[usize]) -> bool {
    name.contains("encoder.layer.") && name.ends_with(".weight") && shape.len() == 2
}

/// The `quantization` entry of an int8 folder's `config.json`.
pub fn config_entry() -> Value {
    json!({
        "quant_method": "int8",
        "weights": "int8, symmetric, one f32 scale per output channel",
        "scale_suffix": SCALE_SUFFIX,
        "modules": "encoder dense layers (query, key, value, attention output, MLP)",
        "activations": "quantized per row as each product runs (asymmetric uint8)",
    })
}

/// Checks `config.json`'s `quantization` entry against the weights: an int8 folder must say
/// `"quant_method": "int8"`, and a config that names another method (GPTQ, AWQ, int4, ...)
/// is refused rather than run as if its weights were plain floats.
pub fn check_config_entry(config: Option<&Value>, stored_int8: bool) -> Result<()> {
    let entry = config.and_then(|c| {
        c.get("quantization")
            .or_else(|| c.get("quantization_config"))
    });
    let method = entry.map(|e| e.get("quant_method").and_then(Value::as_str));
    match (method, stored_int8) {
        (None, false) | (Some(Some("int8")), true) => Ok(()),
        (None, true) => anyhow::bail!(
            "the weights hold int8 tensors but config.json has no quantization entry \
             (\"quant_method\": \"int8\")"
        ),
        (Some(Some("int8")), false) => {
            anyhow::bail!("quantization says int8 but the weights hold no int8 tensors")
        }
        (Some(method), _) => anyhow::bail!(
            "quantization method {} is not supported (int8 folders written by vit convert \
             --dtype int8 are)",
            method.map_or_else(|| "(none given)".to_string(), |m| format!("{m:?}"))
        ),
    }
}

/// A tensor as written: f32 (or another float dtype), or int8 codes.
enum Written {
    Float(Tensor),
    Int8 { shape: Vec<usize>, codes: Vec<u8> },
}

impl View for &Written {
    fn dtype(&self) -> Dtype {
        match self {
            Written::Float(tensor) => View::dtype(tensor),
            Written::Int8 { .. } => Dtype::I8,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            Written::Float(tensor) => tensor.dims(),
            Written::Int8 { shape, .. } => shape,
        }
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Written::Float(tensor) => View::data(tensor),
            Written::Int8 { codes, .. } => codes.into(),
        }
    }

    fn data_len(&self) -> usize {
        match self {
            Written::Float(tensor) => View::data_len(tensor),
            Written::Int8 { codes, .. } => codes.len(),
        }
    }
}

/// What quantizing a folder's weights did.
#[derive(Debug, Clone, Default)]
pub struct Quantized {
    /// Weights stored as int8.
    pub tensors: usize,
    /// Elements of them.
    pub elements: usize,
    /// Bytes of tensor data now written.
    pub bytes: u64,
    /// The largest `|scale * code - weight|` of any element.
    pub max_change: f64,
    /// The names of the tensors now in the file (the scales among them).
    pub names: Vec<String>,
}

/// Rewrites the safetensors file `path`, stored in `layout`'s names, with its encoder dense
/// weights as int8 and their scales (into a temporary file beside it, then renamed over it).
pub fn quantize_file(path: &Path, layout: Layout) -> Result<Quantized> {
    let source = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut written: BTreeMap<String, Written> = BTreeMap::new();
    let mut report = Quantized::default();
    for (name, tensor) in source {
        if !is_quantized_weight(&layout.canonical_name(&name), tensor.dims()) {
            report.bytes += (tensor.elem_count() * tensor.dtype().size_in_bytes()) as u64;
            written.insert(name, Written::Float(tensor.contiguous()?));
            continue;
        }
        let (rows, cols) = tensor.dims2()?;
        let values = tensor
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()
            .with_context(|| format!("tensor {name}"))?;
        let mut codes = Vec::with_capacity(rows * cols);
        let mut scales = Vec::with_capacity(rows);
        for row in values.chunks_exact(cols.max(1)).take(rows) {
            let (quantized, scale) = quantize_channel(row);
            for (&q, &w) in quantized.iter().zip(row) {
                let change = (q as f32 * scale - w).abs() as f64;
                report.max_change = report.max_change.max(change);
            }
            codes.extend(quantized.iter().map(|&q| q as u8));
            scales.push(scale);
        }
        report.tensors += 1;
        report.elements += rows * cols;
        report.bytes += (codes.len() + 4 * rows) as u64;
        written.insert(
            format!("{name}{SCALE_SUFFIX}"),
            Written::Float(Tensor::from_vec(scales, rows, &Device::Cpu)?),
        );
        written.insert(
            name,
            Written::Int8 {
                shape: vec![rows, cols],
                codes,
            },
        );
    }
    let staging = path.with_extension("int8.tmp");
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(
        written.iter().map(|(name, tensor)| (name.as_str(), tensor)),
        Some(metadata),
        &staging,
    )
    .with_context(|| format!("{}: cannot write safetensors", staging.display()))?;
    std::fs::rename(&staging, path)
        .with_context(|| format!("{}: cannot replace", path.display()))?;
    report.names = written.into_keys().collect();
    Ok(report)
}

/// Checks what an int8 folder's weights read back as (dequantized) against the f32 weights
/// they came from: every quantized weight the product of the codes and scales the
/// quantization of `source` gives, bit for bit; every other tensor equal.
pub fn verify_dequantized(
    name: &str,
    source: &Tensor,
    dequantized: &Tensor,
    quantized: bool,
) -> Result<()> {
    ensure!(
        source.dims() == dequantized.dims(),
        "tensor {name} reads back with shape {:?}, not {:?}",
        dequantized.dims(),
        source.dims()
    );
    if !quantized {
        return Ok(());
    }
    let (_, cols) = source.dims2()?;
    let values = source
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let read = dequantized.flatten_all()?.to_vec1::<f32>()?;
    for (r, (row, back)) in values
        .chunks_exact(cols.max(1))
        .zip(read.chunks_exact(cols.max(1)))
        .enumerate()
    {
        let (codes, scale) = quantize_channel(row);
        for (c, (&q, &b)) in codes.iter().zip(back).enumerate() {
            ensure!(
                (q as f32 * scale).to_bits() == b.to_bits(),
                "tensor {name}: [{r}, {c}] reads back as {b:e}, not {:e} (code {q}, scale {scale:e})",
                q as f32 * scale
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_encoder_dense_weights_are_quantized() {
        for (name, shape, expected) in [
            (
                "vit.encoder.layer.0.attention.attention.query.weight",
                &[4, 4][..],
                true,
            ),
            ("encoder.layer.11.mlp.fc1.weight", &[16, 4], true),
            ("vit.encoder.layer.0.layernorm_before.weight", &[4], false),
            (
                "vit.encoder.layer.0.attention.attention.query.bias",
                &[4],
                false,
            ),
            (
                "vit.embeddings.patch_embeddings.projection.weight",
                &[4, 3, 2, 2],
                false,
            ),
            ("classifier.weight", &[10, 4], false),
        ] {
            assert_eq!(is_quantized_weight(name, shape), expected, "{name}");
        }
    }
}
