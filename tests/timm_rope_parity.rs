//! Parity with timm's rotary `Eva` models on the golden fixtures of
//! `tests/fixtures/generate.py --only timm_rope` (timm hub-style folders written by
//! `save_for_hf`): EVA-02 (packed GluMlp, and SwiGLU with `scale_mlp` and separate q/k/v),
//! RoPE-ViT's axial and mixed (learned per-head frequencies) models with and without
//! absolute positions, an SBB ViT with a register token, and timm's DINOv3 (a backbone, every
//! token compared, and a SwiGLU classifier); logits and the pooled embedding at the model's size and at another, on
//! every CPU kernel and on the differentiable path.

mod common;

use candle_core::Device;
use common::{f32_values, fixture, max_abs_diff};
use serde_json::Value;
use vit::model::{EmbeddingKind, LoadedModel, ModelFiles, ModelOptions};

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("timm_rope/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every case on the kernels of `model`; with `tracked`, over weights that track gradients.
fn check_timm_rope(model: ModelOptions, tracked: bool) {
    let cases = cases();
    assert_eq!(cases.len(), 9, "expected every timm rotary case");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let dir = fixture(case["dir"].as_str().unwrap());
        let (loaded, io) = common::load_fixture_model(name, &dir, model, tracked);
        assert!(loaded.config.variant.rotary.is_some(), "{name}");
        let model = &loaded.model;
        for (i, size) in case["inputs"].as_array().unwrap().iter().enumerate() {
            let pixels = &io[&format!("pixel_values_{i}")];
            let (output, ours) = match model.has_head() {
                true => ("logits", model.forward(pixels)),
                false => ("tokens", model.embed(pixels, EmbeddingKind::Tokens)),
            };
            let ours = ours.unwrap_or_else(|e| panic!("{name} at {size}: {e:#}"));
            let pooled = model.embed(pixels, EmbeddingKind::Auto).unwrap();
            for (output, ours) in [(output, ours), ("pooled", pooled)] {
                let what = format!("{name} {output} vs timm at {size}");
                common::assert_close(&what, &ours, &io[&format!("{output}_{i}")]);
            }
        }
    }
}

#[test]
fn timm_rotary_models_match_timm_on_every_cpu_kernel() {
    common::on_every_kernel(|model| check_timm_rope(model, false));
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

/// timm's DINOv3 backbone converts to HF's `DINOv3ViTModel` layout: the written folder reads
/// as `dinov3_vit` and gives timm's tokens (HF's class-token pooling, with a note); timm's
/// DINOv3 classifier (a head on the patch mean) has no HF counterpart and is refused.
#[test]
fn vit_convert_writes_timm_dinov3_backbones_as_hf_dinov3() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("hf");
    let dir = fixture("timm_rope/dinov3_qkvb");
    let output = common::vit(&[
        "convert",
        dir.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    assert!(common::stderr(&output).contains("pooler_output"));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(json["model_type"], "dinov3_vit");
    assert_eq!(json["architectures"][0], "DINOv3ViTModel");
    assert_eq!(
        (
            json["key_bias"].as_bool(),
            json["num_register_tokens"].as_u64()
        ),
        (Some(false), Some(4))
    );
    let loaded = LoadedModel::load(&ModelFiles::local(&out).unwrap(), &common::cpu_f32()).unwrap();
    assert_eq!(loaded.layout.name(), "HF dinov3_vit");
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    for i in 0..2 {
        let pixels = &io[&format!("pixel_values_{i}")];
        let tokens = loaded.model.embed(pixels, EmbeddingKind::Tokens).unwrap();
        let diff = max_abs_diff(
            &f32_values(&tokens),
            &f32_values(&io[&format!("tokens_{i}")]),
        );
        assert!(
            diff < 1e-4,
            "converted tokens {i}: max |diff| {diff} vs timm"
        );
    }

    let classifier = fixture("timm_rope/dinov3_swiglu");
    let refused = scratch.path().join("refused");
    let output = common::vit(&[
        "convert",
        classifier.to_str().unwrap(),
        "-o",
        refused.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", common::stderr(&output));
    assert!(
        common::stderr(&output).contains("no HF counterpart"),
        "{}",
        common::stderr(&output)
    );
    assert!(!refused.exists());
}
