//! Benchmark building blocks: model presets, exact FLOP counts, latency statistics, memory.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use crate::device::Precision;
use crate::model::config::generic_labels;
use crate::model::config::{Biases, MlpKind};
use crate::model::weights::{expected_tensors, StateDict};
use crate::model::{Activation, Head, ViTConfig, VisionTransformer};

/// Width, depth, heads and MLP size of the standard ViT sizes.
const SIZES: [(&str, usize, usize, usize, usize); 5] = [
    ("tiny", 192, 12, 3, 768),
    ("small", 384, 12, 6, 1536),
    ("base", 768, 12, 12, 3072),
    ("large", 1024, 24, 16, 4096),
    ("huge", 1280, 32, 16, 5120),
];

/// The names of every preset: `vit-{tiny,small,base,large,huge}-patch{16,32}-{224,384}`,
/// `vit-huge-patch14-{224,384}` and `deit-{tiny,small,base}-patch16-{224,384}`.
pub fn preset_names() -> Vec<String> {
    let mut names = Vec::new();
    for (size, ..) in SIZES {
        let patches: &[usize] = if size == "huge" {
            &[14, 16, 32]
        } else {
            &[16, 32]
        };
        for patch in patches {
            for image in [224, 384] {
                names.push(format!("vit-{size}-patch{patch}-{image}"));
            }
        }
    }
    for size in ["tiny", "small", "base"] {
        for image in [224, 384] {
            names.push(format!("deit-{size}-patch16-{image}"));
        }
    }
    names
}

/// The architecture of a preset (1000 ImageNet classes; DeiT uses layer-norm eps 1e-6).
pub fn preset_config(name: &str) -> Result<ViTConfig> {
    if !preset_names().iter().any(|n| n == name) {
        bail!(
            "unknown preset {name:?} (one of: {})",
            preset_names().join(", ")
        );
    }
    let parts: Vec<&str> = name.split('-').collect();
    let (family, size, patch, image) = (parts[0], parts[1], parts[2], parts[3]);
    let &(_, hidden, layers, heads, intermediate) = SIZES
        .iter()
        .find(|s| s.0 == size)
        .expect("preset sizes are known");
    Ok(ViTConfig {
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        intermediate_size: intermediate,
        hidden_act: Activation::Gelu,
        layer_norm_eps: if family == "deit" { 1e-6 } else { 1e-12 },
        image_size: image.parse()?,
        patch_size: patch.trim_start_matches("patch").parse()?,
        num_channels: 3,
        biases: Biases::with_qkv(true),
        id2label: generic_labels(1000),
        variant: Default::default(),
    })
}

/// Random weights for `config` (uniform with std 0.02; layer norms at weight 1, bias 0), the
/// same for the same seed (candle's CPU generator cannot be seeded).
pub fn random_state_dict(config: &ViTConfig, seed: u64) -> Result<StateDict> {
    let device = Device::Cpu;
    let mut state = seed;
    expected_tensors(config)
        .into_iter()
        .map(|(name, shape)| {
            let tensor = if name.contains("layernorm") && name.ends_with(".weight") {
                Tensor::ones(shape, DType::F32, &device)?
            } else if name.contains("layernorm") {
                Tensor::zeros(shape, DType::F32, &device)?
            } else {
                let count = shape.iter().product::<usize>();
                let values: Vec<f32> = (0..count).map(|_| uniform_std_002(&mut state)).collect();
                Tensor::from_vec(values, shape, &device)?
            };
            Ok((name, tensor))
        })
        .collect()
}

/// A sample of the uniform distribution with standard deviation 0.02 (SplitMix64).
fn uniform_std_002(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let unit = ((z ^ (z >> 31)) >> 40) as f32 / (1u32 << 24) as f32;
    (unit * 2.0 - 1.0) * 0.02 * 3f32.sqrt()
}

/// Number of parameters of a config.
pub fn parameter_count(config: &ViTConfig) -> usize {
    expected_tensors(config)
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum()
}

/// FLOPs (2 per multiply-add) of one forward pass of one `size` x `size` image: every matrix
/// product, attention included; elementwise ops, softmax and norms are not counted.
pub fn forward_flops(config: &ViTConfig, size: usize) -> u64 {
    let (h, i, p, c) = (
        config.hidden_size as u64,
        config.intermediate_size as u64,
        config.patch_size as u64,
        config.num_channels as u64,
    );
    let variant = &config.variant;
    let patches = (size as u64 / p).pow(2);
    let tokens = patches + variant.prefix_tokens() as u64;
    let embed = 2 * patches * c * p * p * h;
    let mlp_input = match variant.mlp {
        MlpKind::Standard => i,
        MlpKind::SwiGlu | MlpKind::Gated => 2 * i,
    };
    let per_layer = 2 * tokens * h * 3 * h // fused q, k, v
        + 2 * 2 * tokens * tokens * h // scores and context
        + 2 * tokens * h * h // attention output
        + 2 * tokens * h * (mlp_input + i); // MLP
    let heads = match variant.head {
        Head::None => 0,
        Head::Linear => 1,
        Head::Distilled => 2,
    };
    let head =
        2 * heads * variant.pooled_width(config.hidden_size) as u64 * config.num_labels() as u64;
    embed + config.num_hidden_layers as u64 * per_layer + head
}

/// The sizes `--peak` measures.
pub const PEAK_SIZES: [usize; 2] = [2048, 4096];

/// Achieved GFLOP/s (GOP/s in int8) of an `n` x `n` by `n` x `n` matrix product in
/// `precision` on `device`, best of `repeats` after one warm-up, and the kernel that ran it:
/// the CPU engine (packing both operands, as a library's product does) for f32 on the CPU;
/// for int8, the int8 product with A quantized per row in the call (the weight packed
/// before); candle's matmul otherwise.
pub fn matmul_peak_gflops(
    n: usize,
    precision: Precision,
    device: &Device,
    repeats: usize,
) -> Result<(f64, String)> {
    let dtype = precision.dtype;
    let time_best = |run: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        run()?;
        let mut best = f64::INFINITY;
        for _ in 0..repeats.max(1) {
            let start = std::time::Instant::now();
            run()?;
            best = best.min(start.elapsed().as_secs_f64());
        }
        Ok(2.0 * (n as f64).powi(3) / best / 1e9)
    };
    if precision.int8 {
        use crate::kernels::int8::{linear_int8, Int8Kernel, PackedI8};
        use crate::kernels::{Epilogue, Isa};
        if !device.is_cpu() {
            bail!("int8 products run on the CPU only");
        }
        let kernel = Int8Kernel::for_isa(Isa::current());
        let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 - 2.0).collect();
        let packed = PackedI8::quantize(kernel, (n, n), |j| &b[j * n..(j + 1) * n]);
        let gops = time_best(&mut || {
            std::hint::black_box(linear_int8(&a, &packed, &Epilogue::none()));
            Ok(())
        })?;
        return Ok((gops, format!("vit int8 {}", kernel.name())));
    }
    if device.is_cpu() && dtype == DType::F32 {
        use crate::kernels::{gemm, Epilogue, Isa, View};
        let isa = Isa::current();
        let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 - 2.0).collect();
        let mut c = vec![0f32; n * n];
        let gflops = time_best(&mut || {
            // SAFETY: a, b and c each hold an n x n matrix; c is not read meanwhile.
            unsafe {
                gemm(
                    isa,
                    (n, n, n),
                    View::of(&a, n, n),
                    View::of(&b, n, n),
                    c.as_mut_ptr(),
                    n,
                    &Epilogue::none(),
                    true,
                )
            };
            Ok(())
        })?;
        return Ok((gflops, format!("vit {}", isa.name())));
    }
    let a = Tensor::ones((n, n), DType::F32, device)?.to_dtype(dtype)?;
    let b = Tensor::ones((n, n), DType::F32, device)?.to_dtype(dtype)?;
    let gflops = time_best(&mut || {
        a.matmul(&b)?;
        device.synchronize()?;
        Ok(())
    })?;
    Ok((gflops, "candle matmul".into()))
}

/// One dense-layer product of a forward pass, timed as the CPU engine runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerProduct {
    /// `qkv`, `attention output`, `mlp in` or `mlp out`.
    pub name: &'static str,
    /// Rows (tokens of the batch), inputs and outputs of the product.
    pub shape: (usize, usize, usize),
    pub gflops: f64,
}

/// A dense layer's product over its input, as the benchmark times it.
type LayerFn = dyn Fn(&[f32], &crate::kernels::Epilogue) -> Vec<f32>;

/// GFLOP/s (GOP/s for `int8`) of each dense layer's product of one encoder layer of `config`
/// over `rows` tokens,
/// best of at least `repeats` calls and `min_seconds` after one warm-up: the CPU engine in f32 with the weight packed once and
/// the layer's epilogue fused into the store (bias, the MLP's activation, the residual), as in
/// a forward pass. Attention's own products (scores, context) are not among them.
pub fn dense_layer_gflops(
    config: &ViTConfig,
    rows: usize,
    int8: bool,
    repeats: usize,
    min_seconds: f64,
) -> Vec<LayerProduct> {
    use crate::kernels::int8::{linear_int8, Int8Kernel, PackedI8};
    use crate::kernels::{linear, Epilogue, Isa, PackedB};
    let isa = Isa::current();
    let (h, i) = (config.hidden_size, config.intermediate_size);
    let mlp_in = match config.variant.mlp {
        MlpKind::Standard => i,
        MlpKind::SwiGlu | MlpKind::Gated => 2 * i,
    };
    let layers = [
        ("qkv", h, 3 * h, None, false),
        ("attention output", h, h, None, true),
        ("mlp in", h, mlp_in, Some(config.hidden_act), false),
        ("mlp out", i, h, None, true),
    ];
    let value = |index: usize| ((index % 13) as f32 - 6.0) * 0.01;
    layers
        .into_iter()
        .map(|(name, k, n, activation, residual)| {
            let weight: Vec<f32> = (0..n * k).map(value).collect();
            let row = |j: usize| &weight[j * k..(j + 1) * k];
            let product: Box<LayerFn> = match int8 {
                false => {
                    let packed = PackedB::from_weight_rows(isa, (n, k), row);
                    Box::new(move |x, e| linear(x, &packed, e))
                }
                true => {
                    let packed = PackedI8::quantize(Int8Kernel::for_isa(isa), (n, k), row);
                    Box::new(move |x, e| linear_int8(x, &packed, e))
                }
            };
            let x: Vec<f32> = (0..rows * k).map(|index| value(index + 5)).collect();
            let bias: Vec<f32> = (0..n).map(value).collect();
            let skip: Vec<f32> = match residual {
                true => (0..rows * n).map(value).collect(),
                false => Vec::new(),
            };
            let epilogue = Epilogue {
                residual: residual.then_some(skip.as_slice()),
                ..Epilogue::dense(
                    Some(&bias),
                    activation.map_or(crate::kernels::Activation::None, |a| a.engine()),
                )
            };
            std::hint::black_box(product(&x, &epilogue));
            let mut best = f64::INFINITY;
            let started = std::time::Instant::now();
            let mut runs = 0;
            while runs < repeats.max(1) || started.elapsed().as_secs_f64() < min_seconds {
                let start = std::time::Instant::now();
                std::hint::black_box(product(&x, &epilogue));
                best = best.min(start.elapsed().as_secs_f64());
                runs += 1;
            }
            LayerProduct {
                name,
                shape: (rows, k, n),
                gflops: 2.0 * (rows * k * n) as f64 / best / 1e9,
            }
        })
        .collect()
}

/// Latency percentiles of a timed run, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
}

impl Latency {
    /// Percentiles by nearest rank over the samples (seconds per batch).
    pub fn from_samples(samples: &[f64]) -> Result<Self> {
        if samples.is_empty() {
            bail!("no timed iterations");
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[index]
        };
        Ok(Self {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            mean: samples.iter().sum::<f64>() / samples.len() as f64,
        })
    }
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Device memory in use on a GPU, in bytes, if the backend can tell.
pub fn device_memory_used(device: &Device) -> Option<u64> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            let (free, total) =
                candle_core::cuda_backend::cudarc::driver::result::mem_get_info().ok()?;
            Some((total - free) as u64)
        }
        _ => None,
    }
}

/// How a candidate attention kernel's logits compare with standard attention's.
#[derive(Debug, Clone, Copy)]
pub struct KernelAgreement {
    /// Largest absolute logit difference (infinite if the candidate gave NaN).
    pub max_abs_diff: f32,
    /// The largest difference accepted for the dtype.
    pub tolerance: f32,
    /// Whether the candidate may be timed and reported.
    pub agrees: bool,
}

/// Runs `reference` (standard attention) and `candidate` on the same `input` and compares their
/// logits with the tolerance of `dtype`: a kernel that disagrees must not be reported.
pub fn compare_kernels(
    reference: &VisionTransformer,
    candidate: &VisionTransformer,
    input: &Tensor,
    dtype: DType,
) -> Result<KernelAgreement> {
    let logits = |model: &VisionTransformer| -> Result<Vec<f32>> {
        Ok(model
            .output(input)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    let (max_abs_diff, agrees) = kernels_agree(&logits(reference)?, &logits(candidate)?, dtype);
    Ok(KernelAgreement {
        max_abs_diff,
        tolerance: kernel_tolerance(dtype),
        agrees,
    })
}

/// Largest absolute difference between two kernels' outputs, and whether it is within the
/// tolerance for `dtype`.
pub fn kernels_agree(reference: &[f32], candidate: &[f32], dtype: DType) -> (f32, bool) {
    let diff = reference
        .iter()
        .zip(candidate)
        .map(|(a, b)| (a - b).abs())
        .fold(
            0f32,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        );
    (diff, diff <= kernel_tolerance(dtype))
}

/// Largest logit difference accepted between attention kernels, per dtype.
pub fn kernel_tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 2e-2,
        DType::BF16 => 1e-1,
        _ => 1e-3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vit_base_costs_35_gflop_per_image() {
        let config = preset_config("vit-base-patch16-224").unwrap();
        let flops = forward_flops(&config, 224) as f64 / 1e9;
        assert!((flops - 35.1).abs() < 0.1, "{flops}");
        assert_eq!(parameter_count(&config), 86_567_656);
    }

    #[test]
    fn presets_parse_and_unknown_ones_are_listed() {
        for name in preset_names() {
            preset_config(&name).unwrap().validate().unwrap();
        }
        let deit = preset_config("deit-tiny-patch16-224").unwrap();
        assert_eq!((deit.hidden_size, deit.layer_norm_eps), (192, 1e-6));
        let err = preset_config("vit-giant").unwrap_err().to_string();
        assert!(err.contains("vit-base-patch16-224"), "{err}");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let latency = Latency::from_samples(&samples).unwrap();
        assert_eq!((latency.p50, latency.p90, latency.p99), (50.0, 90.0, 99.0));
        assert!(Latency::from_samples(&[]).is_err());
    }

    /// The tiniest model: 2 layers of width 16 on 16x16 images; with `tracked`, its weights
    /// track gradients, which takes candle's ops instead of the engine's kernels.
    fn micro_model(seed: u64, tracked: bool) -> VisionTransformer {
        let config = ViTConfig::from_json(
            r#"{"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 32, "image_size": 16, "patch_size": 4,
                "id2label": {"0": "a", "1": "b", "2": "c"}}"#,
        )
        .unwrap();
        let options = crate::model::LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            num_heads: None,
            model: crate::model::ModelOptions {
                attention: crate::model::AttentionKernel::Standard,
                ..Default::default()
            },
        };
        let mut weights = random_state_dict(&config, seed).unwrap();
        if tracked {
            for tensor in weights.values_mut() {
                *tensor = candle_core::Var::from_tensor(tensor)
                    .unwrap()
                    .as_tensor()
                    .clone();
            }
        }
        crate::model::build(weights, &config, &options).unwrap()
    }

    #[test]
    fn a_kernel_is_compared_on_the_models_logits() {
        let input = Tensor::randn(0f32, 1.0, (2, 3, 16, 16), &Device::Cpu).unwrap();
        let reference = micro_model(0, false);
        // The same weights through other code (candle's ops, as for training): it agrees.
        let same = compare_kernels(&reference, &micro_model(0, true), &input, DType::F32).unwrap();
        assert!(same.agrees && same.max_abs_diff < 1e-5, "{same:?}");
        // Other weights stand in for a broken kernel: refused.
        let wrong =
            compare_kernels(&reference, &micro_model(1, false), &input, DType::F32).unwrap();
        assert!(
            !wrong.agrees && wrong.max_abs_diff > wrong.tolerance,
            "{wrong:?}"
        );
    }

    #[test]
    fn disagreeing_kernels_are_detected() {
        let reference = [1.0f32, -2.0, 3.0];
        assert!(kernels_agree(&reference, &[1.0, -2.0, 3.0005], DType::F32).1);
        assert!(!kernels_agree(&reference, &[1.0, -2.0, 3.5], DType::F32).1);
        assert!(!kernels_agree(&reference, &[1.0, f32::NAN, 3.0], DType::BF16).1);
        assert!(kernels_agree(&reference, &[1.05, -2.0, 3.0], DType::BF16).1);
    }
}
