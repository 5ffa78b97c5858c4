//! Parity with HF transformers' image-text models on the golden fixtures of
//! `tests/fixtures/generate.py --only clip` and `--only siglip`, on real shared photos:
//! random `CLIPModel`s (HF's own initialisation, patch 32 and 16, odd widths, quick-GELU,
//! both of HF's text poolings) and `SiglipModel`s (HF's own initialisation, attention-pooled
//! image tower, padded bidirectional text tower, logit bias): `logits_per_image` and the
//! image and text features within 1e-4, the pipeline's zero-shot scores; the image-only
//! `CLIPVisionModelWithProjection` and `SiglipVisionModel`, and
//! `SiglipForImageClassification`; each on both of HF's image backends (torchvision, its
//! default, and PIL).

mod common;

use std::path::Path;

use candle_core::Device;
use common::{f32_values, fixture, max_abs_diff, shared_dir};
use serde_json::Value;
use vit::classifier::Classifier;
use vit::model::{EmbeddingKind, LoadedModel, ModelFiles};
use vit::preprocess::{ImageBackend, PixelValues};
use vit::zero_shot::label_texts;

fn manifest(family: &str) -> Value {
    let text = std::fs::read_to_string(fixture(&format!("{family}/cases.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn load(dir: &str) -> LoadedModel {
    let files = ModelFiles::local(&fixture(dir)).unwrap();
    LoadedModel::load(&files, &common::cpu_f32()).unwrap_or_else(|e| panic!("{dir}: {e:#}"))
}

/// HF's image backends, with the suffix of the fixtures' tensors and pipeline scores each
/// made.
const BACKENDS: [(ImageBackend, &str); 2] = [
    (ImageBackend::HfTorchvision, "_torchvision"),
    (ImageBackend::HfPil, ""),
];

/// The model of `dir` preprocessing images as `backend` does.
fn load_on(dir: &str, backend: ImageBackend) -> LoadedModel {
    let mut loaded = load(dir);
    loaded.preprocess = loaded.preprocess.with_backend(backend);
    loaded
}

/// The case's shared photos, preprocessed as `classifier`'s model asks.
fn photo_pixels(classifier: &Classifier, shared: &Path, case: &Value) -> Vec<PixelValues> {
    let paths: Vec<_> = strings(&case["photos"])
        .iter()
        .map(|p| shared.join("images").join(p))
        .collect();
    classifier
        .pixel_values_many(&paths)
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

fn read_io(dir: &str) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(fixture(dir).join("io.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn clip_matches_hf_on_real_photos() {
    check_image_text("clip");
}

#[test]
fn siglip_matches_hf_on_real_photos() {
    check_image_text("siglip");
}

/// The text and image features, `logits_per_image` and pipeline scores of each case of
/// `family`'s fixtures.
fn check_image_text(family: &str) {
    let Some(shared) = shared_dir() else { return };
    let manifest = manifest(family);
    let cases = manifest["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let dir = case["dir"].as_str().unwrap();
        let loaded = load(dir);
        assert!(
            loaded.unused_tensors.is_empty(),
            "{name}: {:?}",
            loaded.unused_tensors
        );
        let io = read_io(dir);
        let labels = strings(&case["labels"]);
        let template = case["template"].as_str().unwrap();
        let sequences = label_texts(&labels, template).unwrap();

        let text = loaded.text.as_ref().expect("a text tower");
        let tokenizer = text.tokenizer.as_ref().unwrap();
        let hf_ids = io["input_ids"].to_vec2::<i64>().unwrap();
        for (sequence, hf) in sequences.iter().zip(&hf_ids) {
            let ours = tokenizer.encode(sequence).unwrap().ids;
            let hf: Vec<u32> = hf[..ours.len()].iter().map(|&i| i as u32).collect();
            assert_eq!(ours, hf, "{name}: tokens of {sequence:?}");
        }
        let text_embeds = text.embed(&sequences).unwrap();
        let diff = max_abs_diff(&f32_values(&text_embeds), &f32_values(&io["text_features"]));
        assert!(diff < 1e-4, "{name}: max |text_features diff| {diff}");

        for (backend, suffix) in BACKENDS {
            let loaded = load_on(dir, backend);
            let name = format!("{name} ({})", backend.describe());
            let classifier =
                Classifier::zero_shot(loaded, Device::Cpu, None, labels.clone(), template).unwrap();
            let photos = strings(&case["photos"]);
            let pixels = photo_pixels(&classifier, &shared, case);
            let batch: Vec<_> = pixels.iter().collect();
            let image_embeds = classifier
                .model
                .embed(
                    &classifier.batch_tensor(&batch).unwrap(),
                    EmbeddingKind::Auto,
                )
                .unwrap();
            let expected = &io[&format!("image_features{suffix}")];
            let diff = max_abs_diff(&f32_values(&image_embeds), &f32_values(expected));
            assert!(diff < 1e-4, "{name}: max |image_features diff| {diff}");
            let logits = classifier.logits(&batch).unwrap();
            let flat: Vec<f32> = logits.iter().flatten().copied().collect();
            let expected = &io[&format!("logits_per_image{suffix}")];
            let diff = max_abs_diff(&flat, &f32_values(expected));
            assert!(diff < 1e-4, "{name}: max |logits_per_image diff| {diff}");

            let function = classifier.zero_shot.as_ref().unwrap().score_function();
            let pipeline = &case[format!("pipeline_scores{suffix}")];
            for (photo, row) in photos.iter().zip(&logits) {
                let scores = function.apply(row);
                for (label, score) in labels.iter().zip(scores) {
                    let hf = pipeline[photo][label].as_f64().unwrap() as f32;
                    assert!(
                        (score - hf).abs() < 1e-5,
                        "{name} {photo} {label}: {score} vs {hf}"
                    );
                }
            }
        }
    }
}

#[test]
fn clip_vision_with_projection_embeds_as_hf() {
    check_vision("clip");
}

#[test]
fn siglip_vision_embeds_as_hf() {
    check_vision("siglip");
}

/// The image embeddings of the image-only model of each case of `family`'s fixtures.
fn check_vision(family: &str) {
    let Some(shared) = shared_dir() else { return };
    let manifest = manifest(family);
    for case in manifest["cases"].as_array().unwrap() {
        let dir = case["vision_dir"].as_str().unwrap();
        let loaded = load(dir);
        assert!(loaded.text.is_none());
        assert!(!loaded.model.has_head());
        assert!(
            loaded.unused_tensors.is_empty(),
            "{dir}: {:?}",
            loaded.unused_tensors
        );
        let io = read_io(dir);
        for (backend, suffix) in BACKENDS {
            let classifier = Classifier::new(load_on(dir, backend), Device::Cpu, None).unwrap();
            let pixels = photo_pixels(&classifier, &shared, case);
            let batch: Vec<_> = pixels.iter().collect();
            let rows = classifier.embeddings(&batch, EmbeddingKind::Auto).unwrap();
            let mut shape = vec![rows.len()];
            shape.extend_from_slice(&rows[0].1);
            let ours: Vec<f32> = rows.into_iter().flat_map(|(values, _)| values).collect();
            let expected = &io[&format!("image_embeds{suffix}")];
            assert_eq!(shape, expected.dims());
            let diff = max_abs_diff(&ours, &f32_values(expected));
            assert!(diff < 1e-4, "{dir}{suffix}: max |image_embeds diff| {diff}");
        }
    }
}

#[test]
fn siglip_for_image_classification_matches_hf() {
    let Some(shared) = shared_dir() else { return };
    let manifest = manifest("siglip");
    for case in manifest["cases"].as_array().unwrap() {
        let dir = case["classifier_dir"].as_str().unwrap();
        let loaded = load(dir);
        assert!(loaded.text.is_none());
        // its checkpoint keeps the attention pooling that its logits do not read
        assert!(
            loaded.unused_tensors.is_empty(),
            "{dir}: {:?}",
            loaded.unused_tensors
        );
        let io = read_io(dir);
        for (backend, suffix) in BACKENDS {
            let classifier = Classifier::new(load_on(dir, backend), Device::Cpu, None).unwrap();
            let pixels = photo_pixels(&classifier, &shared, case);
            let batch: Vec<_> = pixels.iter().collect();
            let logits = classifier.logits(&batch).unwrap();
            let flat: Vec<f32> = logits.iter().flatten().copied().collect();
            let diff = max_abs_diff(&flat, &f32_values(&io[&format!("logits{suffix}")]));
            assert!(diff < 1e-4, "{dir}{suffix}: max |logits diff| {diff}");
        }
    }
}

#[test]
fn a_model_without_a_text_tower_cannot_take_labels() {
    let loaded = load("family/vit_model_p8_s32");
    let err = Classifier::zero_shot(loaded, Device::Cpu, None, vec!["cat".into()], "{}")
        .err()
        .unwrap();
    assert!(err.to_string().contains("no text tower"), "{err}");
}
