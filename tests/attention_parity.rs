//! Attention probabilities and maps against HF transformers' eager attention
//! (`output_attentions=True`) on the golden fixtures of `tests/fixtures/generate.py --only
//! attentions`: ViT, DeiT, DINOv2 with registers, CLIP and SigLIP (its pool's probe), every
//! layer's probabilities, the class token's maps and the rollout computed by the generator,
//! on every CPU kernel and on candle's ops (weights that track gradients).

mod common;

use candle_core::{Device, Tensor};
use common::{f32_values, fixture, max_abs_diff};
use serde_json::Value;
use vit::explain::{BatchAttention, Query};
use vit::model::ModelOptions;

/// The bar for probabilities and maps: values in [0, 1] after two layers of f32 arithmetic.
const TOLERANCE: f32 = 1e-5;

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("attentions/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn assert_within(what: &str, ours: &[f32], expected: &Tensor) {
    let expected = f32_values(expected);
    assert_eq!(ours.len(), expected.len(), "{what}: length");
    let diff = max_abs_diff(ours, &expected);
    assert!(diff < TOLERANCE, "{what}: max |diff| {diff} against HF");
}

fn check_case(case: &Value, model: ModelOptions, tracked: bool) {
    let name = case["name"].as_str().unwrap();
    let files =
        vit::model::ModelFiles::local(&fixture(case["model_dir"].as_str().unwrap())).unwrap();
    let options = vit::model::LoadOptions {
        model,
        ..common::cpu_f32()
    };
    let mut loaded = vit::model::LoadedModel::load(&files, &options).unwrap();
    if tracked {
        loaded.model = common::tracked_model(&files, &loaded);
    }
    let reference =
        candle_core::safetensors::load(fixture(case["file"].as_str().unwrap()), &Device::Cpu)
            .unwrap();
    let run = loaded
        .model
        .output_with_attentions(&reference["pixel_values"])
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));

    let (layers, heads, tokens) = (
        case["layers"].as_u64().unwrap() as usize,
        case["heads"].as_u64().unwrap() as usize,
        case["tokens"].as_u64().unwrap() as usize,
    );
    let prefix = case["prefix_tokens"].as_u64().unwrap() as usize;
    assert_eq!(loaded.model.prefix_tokens(), prefix, "{name}");
    assert_eq!(run.layers.len(), layers, "{name}: layers");
    let stacked = Tensor::stack(&run.layers, 1).unwrap();
    assert_eq!(
        stacked.dims()[1..],
        [layers, heads, tokens, tokens],
        "{name}"
    );
    assert_within(
        &format!("{name}: attentions"),
        &f32_values(&stacked),
        &reference["attentions"],
    );
    match &run.pool {
        Some(pool) => assert_within(
            &format!("{name}: pool attentions"),
            &f32_values(pool),
            &reference["pool_attentions"],
        ),
        None => assert!(
            !reference.contains_key("pool_attentions"),
            "{name}: no pool"
        ),
    }
    let query = match run.pool {
        Some(_) => Query::Probe,
        None => Query::Token(0),
    };

    // Maps from our probabilities, per image, against the generator's from HF's.
    let images = reference["pixel_values"].dim(0).unwrap();
    let output = run.output.clone();
    let batch = BatchAttention::new(&output, run, prefix).unwrap();
    assert_eq!((batch.heads, batch.tokens), (heads, tokens), "{name}");
    let (mut attention, mut first, mut class_heads) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rollout, mut discarded, mut registers) = (Vec::new(), Vec::new(), Vec::new());
    for image in 0..images {
        let attentions = batch.image(image);
        attentions.check().unwrap();
        let last = layers - 1;
        attention.extend(attentions.attention(last, query).unwrap());
        first.extend(attentions.attention(0, query).unwrap());
        class_heads.extend(attentions.head_maps(last, query).unwrap().concat());
        rollout.extend(attentions.rollout(last, query, 0.0).unwrap());
        discarded.extend(attentions.rollout(last, query, 0.5).unwrap());
        for register in 0..case["registers"].as_u64().unwrap() as usize {
            registers.extend(
                attentions
                    .attention(last, Query::Token(1 + register))
                    .unwrap(),
            );
        }
    }
    assert_within(
        &format!("{name}: attention"),
        &attention,
        &reference["attention"],
    );
    if let Some(expected) = reference.get("attention_first") {
        assert_within(&format!("{name}: attention_first"), &first, expected);
    }
    assert_within(
        &format!("{name}: class_heads"),
        &class_heads,
        &reference["class_heads"],
    );
    assert_within(&format!("{name}: rollout"), &rollout, &reference["rollout"]);
    assert_within(
        &format!("{name}: rollout_discard"),
        &discarded,
        &reference["rollout_discard"],
    );
    match reference.get("register_attention") {
        Some(expected) => assert_within(&format!("{name}: registers"), &registers, expected),
        None => assert!(registers.is_empty(), "{name}: registers"),
    }
}

#[test]
fn attentions_and_maps_match_hf_eager_attention_on_every_cpu_kernel() {
    let cases = cases();
    assert_eq!(cases.len(), 5, "vit, deit, dinov2_reg, clip, siglip");
    common::on_every_kernel(|model| {
        for case in &cases {
            check_case(case, model, false);
        }
    });
}

#[test]
fn attentions_match_hf_on_candle_ops_as_training_runs_them() {
    for case in &cases() {
        check_case(case, ModelOptions::default(), true);
    }
}

#[test]
fn keeping_the_attentions_leaves_the_output_unchanged() {
    for case in &cases() {
        let name = case["name"].as_str().unwrap();
        let files =
            vit::model::ModelFiles::local(&fixture(case["model_dir"].as_str().unwrap())).unwrap();
        let loaded = vit::model::LoadedModel::load(&files, &common::cpu_f32()).unwrap();
        let reference =
            candle_core::safetensors::load(fixture(case["file"].as_str().unwrap()), &Device::Cpu)
                .unwrap();
        let pixels = &reference["pixel_values"];
        let plain = loaded.model.output(pixels).unwrap();
        let kept = loaded.model.output_with_attentions(pixels).unwrap().output;
        let diff = max_abs_diff(&f32_values(&plain), &f32_values(&kept));
        // The same products; only the softmax's normalisation moves (before or after v).
        assert!(diff < 1e-4, "{name}: output moved by {diff}");
    }
}
