//! Parity with HF transformers' `DINOv3ViTModel` on the golden fixtures of
//! `tests/fixtures/generate.py --only dinov3` (HF's own random initialisation, odd sizes, a
//! plain and a gated MLP, registers, each bias flag both ways): every token, the class token
//! (`pooler_output`) and the patch mean, at the config's size and at another resolution, on
//! every CPU kernel and on the differentiable path.

mod common;

use candle_core::{DType, Device};
use common::{f32_values, fixture, max_abs_diff};
use serde_json::Value;
use vit::kernels::Isa;
use vit::model::{EmbeddingKind, LoadOptions, LoadedModel, ModelFiles, ModelOptions};

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("dinov3/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn check_dinov3(model: ModelOptions) {
    let cases = cases();
    assert_eq!(cases.len(), 3, "expected every DINOv3 case");
    let options = LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        num_heads: None,
        model,
    };
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let dir = fixture(case["dir"].as_str().unwrap());
        let files = ModelFiles::local(&dir).unwrap();
        let loaded =
            LoadedModel::load(&files, &options).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(
            loaded.unused_tensors.is_empty(),
            "{name}: unused {:?}",
            loaded.unused_tensors
        );
        assert!(!loaded.model.has_head(), "{name}");
        let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
        for (i, size) in case["inputs"].as_array().unwrap().iter().enumerate() {
            let pixels = &io[&format!("pixel_values_{i}")];
            for (output, kind) in [
                ("tokens", EmbeddingKind::Tokens),
                ("pooler", EmbeddingKind::Class),
                ("pooler", EmbeddingKind::Auto),
                ("mean", EmbeddingKind::Mean),
            ] {
                let ours = loaded
                    .model
                    .embed(pixels, kind)
                    .unwrap_or_else(|e| panic!("{name} {output}: {e:#}"));
                let expected = &io[&format!("{output}_{i}")];
                assert_eq!(ours.dims(), expected.dims(), "{name} {output} at {size}");
                let diff = max_abs_diff(&f32_values(&ours), &f32_values(expected));
                assert!(
                    diff < 1e-4,
                    "{name}: max |{output} diff| {diff} vs HF at {size}"
                );
            }
        }
    }
}

#[test]
fn dinov3_matches_hf_transformers_on_every_cpu_kernel() {
    for isa in Isa::supported() {
        eprintln!("checking the {} kernels", isa.name());
        check_dinov3(ModelOptions {
            isa,
            ..ModelOptions::default()
        });
    }
}

#[test]
fn dinov3_matches_on_the_differentiable_path() {
    check_dinov3(ModelOptions {
        differentiable: true,
        ..ModelOptions::default()
    });
}
