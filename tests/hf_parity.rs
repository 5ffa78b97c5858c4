//! Parity with HF transformers on the golden fixtures made by `tests/fixtures/generate.py`
//! (HF's own logits and pixel values; see `tests/fixtures/README.md`).

mod common;

use candle_core::{DType, Device};
use common::{f32_values, fixture, max_abs_diff, shared_dir};
use serde_json::Value;
use vit::kernels::Isa;
use vit::model::{LoadOptions, LoadedModel, ModelFiles, ModelOptions};
use vit::preprocess::{load_rgb, PreprocessConfig};

fn manifest(relative: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture(relative)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn f32_options() -> LoadOptions {
    LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        num_heads: None,
        model: ModelOptions::default(),
    }
}

fn check_model_logits(options: &LoadOptions) {
    let cases = manifest("hf/cases.json");
    assert!(cases.len() >= 10, "expected the full set of HF cases");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let dir = fixture(case["dir"].as_str().unwrap());
        let files = ModelFiles::local(&dir).unwrap();
        assert!(
            files.weights.ends_with(case["weights"].as_str().unwrap()),
            "{name}: loaded {}",
            files.weights.display()
        );
        let loaded = LoadedModel::load(&files, options).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(
            loaded.unused_tensors.is_empty(),
            "{name}: {:?}",
            loaded.unused_tensors
        );
        let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
        let logits = loaded.model.forward(&io["pixel_values"]).unwrap();
        let diff = max_abs_diff(&f32_values(&logits), &f32_values(&io["logits"]));
        assert!(diff < 1e-4, "{name}: max |logit diff| {diff} vs HF");
    }
}

/// Every kernel path of the CPU engine this machine can run: AVX-512, AVX2 (tested even
/// where AVX-512 is there) and the portable one.
#[test]
fn logits_match_hf_transformers_in_f32_on_every_cpu_kernel() {
    let supported = Isa::supported();
    assert!(supported.contains(&Isa::Portable));
    if std::env::var("CI").is_ok_and(|v| v == "true") && cfg!(target_arch = "x86_64") {
        assert!(supported.contains(&Isa::Avx2), "CI machines have AVX2");
    }
    for isa in supported {
        eprintln!("checking the {} kernels", isa.name());
        let mut options = f32_options();
        options.model.isa = isa;
        check_model_logits(&options);
    }
}

#[test]
fn the_differentiable_path_gives_the_same_logits() {
    let mut options = f32_options();
    options.model.differentiable = true;
    check_model_logits(&options);
}

#[test]
fn pixel_values_match_hf_image_processors_within_one_8bit_step() {
    let cases = manifest("preprocess/cases.json");
    let shared = shared_dir();
    let mut checked = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let image_path = match (&case["image"]["shared"], &case["image"]["fixture"], &shared) {
            (Value::String(file), _, Some(shared)) => shared.join("images").join(file),
            (Value::String(_), _, None) => continue,
            (_, Value::String(path), _) => fixture(path),
            _ => panic!("{name}: bad image entry"),
        };
        let config = PreprocessConfig::from_json(&case["processor_config"].to_string())
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let image = load_rgb(&image_path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let ours = config.pixel_values(&image);
        let hf = candle_core::safetensors::load(
            fixture(case["pixel_values"].as_str().unwrap()),
            &Device::Cpu,
        )
        .unwrap()["pixel_values"]
            .clone();
        let dims = hf.dims().to_vec();
        assert_eq!([1, 3, ours.height, ours.width], dims[..], "{name}: size");
        let expected = f32_values(&hf);
        let (_, std) = config.normalize.unwrap_or(([0.0; 3], [1.0; 3]));
        let step = 1.0 / 255.0 / std.iter().cloned().fold(f32::INFINITY, f32::min);
        // One 8-bit step, plus the float16 rounding of the stored values.
        let diff = max_abs_diff(&ours.data, &expected);
        if name.contains("gray16") {
            // Pillow clips 16-bit values to 255 (min(v, 255)); we scale them (v / 257), as a
            // user expects: the difference is deliberate, see load_rgb.
            assert!(
                diff > 100.0 * step,
                "{name}: expected the deliberate 16-bit difference"
            );
            continue;
        }
        assert!(
            diff <= step + 2e-3,
            "{name}: max diff {diff} exceeds one 8-bit step {step}"
        );
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} preprocessing cases ran");
}
