//! Parity with HF transformers' Llama 4 vision encoder on the golden fixtures of
//! `tests/fixtures/generate.py --only llama4` (HF's own random initialisation): a
//! `Llama4VisionModel` and the vision tensors of a whole `Llama4ForConditionalGeneration`,
//! whose language model `vit` never reads. The adapter's tokens (HF's `last_hidden_state`)
//! and their mean, on every CPU kernel and on the differentiable path.

mod common;

use candle_core::{DType, Device};
use common::{f32_values, fixture, max_abs_diff};
use serde_json::Value;
use vit::kernels::Isa;
use vit::model::{EmbeddingKind, LoadOptions, LoadedModel, ModelFiles, ModelOptions};

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("llama4/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every case on the kernels of `model`; with `tracked`, over weights that track gradients
/// (candle's ops, as training runs them).
fn check_llama4(model: ModelOptions, tracked: bool) {
    let cases = cases();
    assert_eq!(cases.len(), 2, "expected every Llama 4 case");
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
        if tracked {
            loaded.model = common::tracked_model(&files, &loaded);
        }
        assert!(
            loaded.unused_tensors.is_empty(),
            "{name}: unused {:?}",
            loaded.unused_tensors
        );
        assert!(!loaded.model.has_head(), "{name}");
        let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
        let pixels = &io["pixel_values"];
        for (output, kind) in [
            ("tokens", EmbeddingKind::Tokens),
            ("mean", EmbeddingKind::Mean),
            ("mean", EmbeddingKind::Auto),
        ] {
            let ours = loaded
                .model
                .embed(pixels, kind)
                .unwrap_or_else(|e| panic!("{name} {output}: {e:#}"));
            let expected = &io[output];
            assert_eq!(ours.dims(), expected.dims(), "{name} {output}");
            let diff = max_abs_diff(&f32_values(&ours), &f32_values(expected));
            assert!(diff < 1e-4, "{name}: max |{output} diff| {diff} vs HF");
        }
        // HF runs the encoder at its config's size only; so does vit, with a message.
        let size = case["input"][0].as_u64().unwrap() as usize;
        let other =
            candle_core::Tensor::zeros((1, 3, size + 8, size + 8), DType::F32, &Device::Cpu)
                .unwrap();
        let err = loaded
            .model
            .embed(&other, EmbeddingKind::Tokens)
            .unwrap_err();
        assert!(err.to_string().contains("runs at"), "{name}: {err}");
    }
}

#[test]
fn llama4_vision_matches_hf_transformers_on_every_cpu_kernel() {
    for isa in Isa::supported() {
        eprintln!("checking the {} kernels", isa.name());
        check_llama4(
            ModelOptions {
                isa,
                ..ModelOptions::default()
            },
            false,
        );
    }
}

#[test]
fn llama4_vision_matches_on_the_differentiable_path() {
    check_llama4(ModelOptions::default(), true);
}
