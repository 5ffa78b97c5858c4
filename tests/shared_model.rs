//! The real pretrained DeiT-Tiny in `../shared` against the independent references there.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device};
use common::{deit_tiny, max_abs_diff, shared_dir};
use vit::classifier::{top_k, Classifier, ScoreFunction};
use vit::model::{LoadOptions, LoadedModel, ModelFiles, ModelOptions};

fn classifier(shared: &std::path::Path, dtype: DType) -> Classifier {
    let files = ModelFiles::local(&deit_tiny(shared)).unwrap();
    let options = LoadOptions {
        device: Device::Cpu,
        dtype,
        num_heads: None,
        model: ModelOptions::default(),
    };
    Classifier::new(LoadedModel::load(&files, &options).unwrap(), Device::Cpu, None).unwrap()
}

#[test]
fn logits_match_the_reference_on_its_exact_pixel_values() {
    let Some(shared) = shared_dir() else { return };
    let classifier = classifier(&shared, DType::F32);
    let reference =
        candle_core::safetensors::load(shared.join("reference/pixel_values_and_logits.safetensors"), &Device::Cpu)
            .unwrap();
    for photo in ["chelsea", "tench"] {
        let pixels = &reference[&format!("{photo}.pixel_values")];
        let expected: Vec<f32> = reference[&format!("{photo}.logits")].flatten_all().unwrap().to_vec1().unwrap();
        let got = classifier.logits_of_tensor(pixels).unwrap();
        let diff = max_abs_diff(&got[0], &expected);
        assert!(diff < 1e-4, "{photo}: max |logit diff| {diff}");
    }
}

#[derive(serde::Deserialize)]
struct PhotoReference {
    top5: Vec<usize>,
    logits: Vec<f32>,
}

fn photo_references(shared: &std::path::Path) -> HashMap<String, PhotoReference> {
    let text = std::fs::read_to_string(shared.join("reference/deit_tiny_pipevit_numpy_logits.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_photo_has_the_reference_top5_and_strict_photos_are_top1_correct() {
    let Some(shared) = shared_dir() else { return };
    let classifier = classifier(&shared, DType::F32);
    let references = photo_references(&shared);
    assert_eq!(references.len(), 26);
    let labels_csv = std::fs::read_to_string(shared.join("images/labels.csv")).unwrap();
    let mut strict = 0;
    let mut worst = 0f32;
    for line in labels_csv.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let (file, accepted, category) = (fields[0], fields[1], fields[2]);
        let pixels = classifier.pixel_values(&shared.join("images").join(file)).unwrap();
        let logits = &classifier.logits(&[&pixels]).unwrap()[0];
        let reference = &references[file];
        let top5: Vec<usize> = top_k(logits, &classifier.config.id2label, 5).iter().map(|p| p.index).collect();
        assert_eq!(top5, reference.top5, "{file}: top-5 differs from the reference");
        worst = worst.max(max_abs_diff(logits, &reference.logits));
        if category == "strict" {
            strict += 1;
            let accepted: Vec<usize> = accepted.split(';').map(|i| i.parse().unwrap()).collect();
            assert!(accepted.contains(&top5[0]), "{file}: top-1 {} not in {accepted:?}", top5[0]);
        }
    }
    assert_eq!(strict, 16, "labels.csv lists 16 strict photos");
    // Whole-pipeline logits (decode + Pillow-exact resize) stay close to the reference.
    assert!(worst < 0.05, "max |logit diff| over all photos {worst}");
}

#[test]
fn bf16_keeps_the_top1_of_strict_photos() {
    let Some(shared) = shared_dir() else { return };
    let classifier = classifier(&shared, DType::BF16);
    let references = photo_references(&shared);
    for file in ["vitcpp_tench.jpg", "vitcpp_magpie.jpeg", "skimage_coffee.png", "vitcpp_cheetah.jpg"] {
        let pixels = classifier.pixel_values(&shared.join("images").join(file)).unwrap();
        let logits = &classifier.logits(&[&pixels]).unwrap()[0];
        let scores = ScoreFunction::Softmax.apply(logits);
        let best = top_k(&scores, &classifier.config.id2label, 1)[0].index;
        assert_eq!(best, references[file].top5[0], "{file}");
    }
}
