//! Parity with HF transformers on the golden fixtures made by `tests/fixtures/generate.py`
//! (HF's own logits and pixel values; see `tests/fixtures/README.md`).

mod common;

use candle_core::Device;
use common::{f32_values, fixture, max_abs_diff, shared_dir};
use serde_json::Value;
use vit::kernels::Isa;
use vit::model::{LoadOptions, LoadedModel, ModelFiles};
use vit::preprocess::{load_rgb, ImageBackend, PreprocessConfig};

fn manifest(relative: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture(relative)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every case loaded with `options`; with `tracked`, rebuilt over weights that track
/// gradients (candle's ops, as training runs them).
fn check_model_logits(options: &LoadOptions, tracked: bool) {
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
        let mut loaded =
            LoadedModel::load(&files, options).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        if tracked {
            loaded.model = common::tracked_model(&files, &loaded);
        }
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
        let mut options = common::cpu_f32();
        options.model.isa = isa;
        check_model_logits(&options, false);
    }
}

#[test]
fn the_differentiable_path_gives_the_same_logits() {
    check_model_logits(&common::cpu_f32(), true);
}

/// Both of HF's backends, on every processor class we read: the 8-bit image after resize
/// and crop is HF's exactly (read back from HF's pixel values, whose float16 rounding is a
/// tenth of an 8-bit step), and the pixel values are HF's within that rounding.
#[test]
fn pixel_values_match_both_hf_backends_exactly() {
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
        let parsed = PreprocessConfig::from_json(&case["processor_config"].to_string())
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let image = load_rgb(&image_path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let tensors = candle_core::safetensors::load(
            fixture(case["pixel_values"].as_str().unwrap()),
            &Device::Cpu,
        )
        .unwrap();
        for (backend, tensor) in [
            (ImageBackend::HfPil, "pixel_values"),
            (ImageBackend::HfTorchvision, "pixel_values_torchvision"),
        ] {
            let config = parsed.with_backend(backend);
            let what = format!("{name} ({})", backend.describe());
            let hf = &tensors[tensor];
            let dims = hf.dims().to_vec();
            let ours = config.pixel_values(&image);
            assert_eq!([1, 3, ours.height, ours.width], dims[..], "{what}: size");
            let expected = f32_values(hf);
            let (mean, std) = config.normalize.expect("every case normalizes");
            let plane = ours.height * ours.width;
            let hf_bytes: Vec<u8> = expected
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let c = i / plane;
                    ((v * std[c] + mean[c]) * 255.0).round().clamp(0.0, 255.0) as u8
                })
                .collect();
            let seen = config.resized_and_cropped(&image);
            let ours_bytes: Vec<u8> = (0..3)
                .flat_map(|c| seen.pixels().map(move |p| p.0[c]))
                .collect();
            let differing = hf_bytes
                .iter()
                .zip(&ours_bytes)
                .filter(|(a, b)| a != b)
                .count();
            if name.contains("gray16") {
                // Pillow clips 16-bit values to 255 (min(v, 255)); we scale them (v / 257),
                // as a user expects: the difference is deliberate, see load_rgb.
                assert!(
                    differing > plane,
                    "{what}: expected the deliberate 16-bit difference"
                );
                continue;
            }
            assert_eq!(
                differing, 0,
                "{what}: {differing} 8-bit values differ from HF's"
            );
            for (i, (o, e)) in ours.data.iter().zip(&expected).enumerate() {
                // float16 keeps 11 significant bits: half a unit of the last is 2^-12 of it.
                let f16_rounding = e.abs() / 2048.0 + 1e-6;
                assert!(
                    (o - e).abs() <= f16_rounding,
                    "{what}: value {i}: {o} vs HF's {e}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} preprocessing cases ran");
}
