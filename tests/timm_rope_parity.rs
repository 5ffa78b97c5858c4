//! Parity with timm's rotary `Eva` models on the golden fixtures of
//! `tests/fixtures/generate.py --only timm_rope` (timm hub-style folders written by
//! `save_for_hf`): EVA-02 (packed GluMlp, and SwiGLU with `scale_mlp` and separate q/k/v),
//! RoPE-ViT's axial and mixed (learned per-head frequencies) models with and without
//! absolute positions, and an SBB ViT with a register token; logits and the pooled embedding at the model's size and at another, on
//! every CPU kernel and on the differentiable path.

mod common;

use candle_core::{DType, Device};
use common::{f32_values, fixture, max_abs_diff};
use serde_json::Value;
use vit::kernels::Isa;
use vit::model::{EmbeddingKind, LoadOptions, LoadedModel, ModelFiles, ModelOptions};

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("timm_rope/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn check_timm_rope(model: ModelOptions, tracked: bool) {
    let cases = cases();
    assert_eq!(cases.len(), 7, "expected every timm rotary case");
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
        let mut loaded =
            LoadedModel::load(&files, &options).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(loaded.config.variant.rotary.is_some(), "{name}");
        if tracked {
            loaded.model = common::tracked_model(&files, &loaded);
        }
        assert!(
            loaded.unused_tensors.is_empty(),
            "{name}: unused {:?}",
            loaded.unused_tensors
        );
        let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
        for (i, size) in case["inputs"].as_array().unwrap().iter().enumerate() {
            let pixels = &io[&format!("pixel_values_{i}")];
            let logits = loaded
                .model
                .forward(pixels)
                .unwrap_or_else(|e| panic!("{name} at {size}: {e:#}"));
            let pooled = loaded.model.embed(pixels, EmbeddingKind::Auto).unwrap();
            for (output, ours) in [("logits", logits), ("pooled", pooled)] {
                let expected = &io[&format!("{output}_{i}")];
                assert_eq!(ours.dims(), expected.dims(), "{name} {output}");
                let diff = max_abs_diff(&f32_values(&ours), &f32_values(expected));
                assert!(
                    diff < 1e-4,
                    "{name}: max |{output} diff| {diff} vs timm at {size}"
                );
            }
        }
    }
}

#[test]
fn timm_rotary_models_match_timm_on_every_cpu_kernel() {
    for isa in Isa::supported() {
        eprintln!("checking the {} kernels", isa.name());
        check_timm_rope(
            ModelOptions {
                isa,
                ..ModelOptions::default()
            },
            false,
        );
    }
}

#[test]
fn timm_rotary_models_match_on_the_differentiable_path() {
    check_timm_rope(ModelOptions::default(), true);
}

/// HF has no layout for timm's rotary ViTs: `vit convert` refuses one by its architecture
/// and writes nothing.
#[test]
fn vit_convert_refuses_timm_rotary_models_by_name() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("out");
    let dir = fixture("timm_rope/eva02_tiny_glu");
    let output = common::vit(&[
        "convert",
        dir.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", common::stderr(&output));
    let stderr = common::stderr(&output);
    assert!(
        stderr.contains("eva02_tiny_patch14_224") && stderr.contains("rotary"),
        "{stderr}"
    );
    assert!(!out.exists());
}
