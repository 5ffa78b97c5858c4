//! Parity with HF transformers' Llama 4 vision encoder on the golden fixtures of
//! `tests/fixtures/generate.py --only llama4` (HF's own random initialisation): a
//! `Llama4VisionModel` and the vision tensors of a whole `Llama4ForConditionalGeneration`,
//! whose language model `vit` never reads. The adapter's tokens (HF's `last_hidden_state`)
//! and their mean, on every CPU kernel and on the differentiable path.

mod common;

use candle_core::{DType, Device};
use common::{f32_values, fixture, max_abs_diff};
use serde_json::Value;
use vit::model::{EmbeddingKind, ModelOptions};

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("llama4/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every case on the kernels of `model`; with `tracked`, over weights that track gradients.
fn check_llama4(model: ModelOptions, tracked: bool) {
    let cases = cases();
    assert_eq!(cases.len(), 2, "expected every Llama 4 case");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let dir = fixture(case["dir"].as_str().unwrap());
        let (loaded, io) = common::load_fixture_model(name, &dir, model, tracked);
        assert!(!loaded.model.has_head(), "{name}");
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
            common::assert_close(&format!("{name} {output} vs HF"), &ours, &io[output]);
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
    common::on_every_kernel(|model| check_llama4(model, false));
}

#[test]
fn llama4_vision_matches_on_the_differentiable_path() {
    check_llama4(ModelOptions::default(), true);
}

/// The canvas and the resize `Llama4ImageProcessor` picks, for a sweep of image sizes and
/// tilings recorded from HF's own functions (f32 scales where HF's sizes are tensors, f64
/// where they are Python ints: 120x90 into 336 tiles resizes to 251 rows, not 252).
#[test]
fn llama4_tiling_plans_match_hf() {
    use vit::preprocess::tiles::{plan, Tiling};
    let text = std::fs::read_to_string(fixture("llama4/preprocess/plans.json")).unwrap();
    let plans: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(plans.len() > 500, "{} plans", plans.len());
    let pair = |v: &Value| {
        (
            v[0].as_u64().unwrap() as usize,
            v[1].as_u64().unwrap() as usize,
        )
    };
    for entry in &plans {
        let tiling = Tiling {
            max_tiles: entry["max_patches"].as_u64().unwrap() as usize,
            resize_to_max_canvas: entry["resize_to_max_canvas"].as_bool().unwrap(),
        };
        let tile = entry["tile"].as_u64().unwrap() as usize;
        let ours = plan(pair(&entry["image"]), tile, tiling);
        let hf = (pair(&entry["canvas"]), pair(&entry["resized"]));
        assert_eq!(ours, hf, "{entry}");
    }
}

/// HF's `Llama4ImageProcessor` (torchvision backend, its only one) on committed images: every
/// tile, the global one included, equal to the bfloat16 values HF returns.
#[test]
fn llama4_preprocessing_matches_hf_torchvision_backend() {
    use vit::preprocess::{load_rgb, PreprocessConfig};
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("llama4/preprocess/cases.json")).unwrap(),
    )
    .unwrap();
    let pixels = candle_core::safetensors::load(
        fixture("llama4/preprocess/pixels.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for image in cases["images"].as_array().unwrap() {
        let key = image["key"].as_str().unwrap();
        let config =
            PreprocessConfig::from_file(&fixture(image["processor"].as_str().unwrap())).unwrap();
        assert!(config.tiling.is_some(), "{key}");
        let path = fixture(image["image"]["fixture"].as_str().unwrap());
        let ours = config.pixel_values(&load_rgb(&path).unwrap());
        let expected = &pixels[key];
        let dims = expected.dims();
        assert_eq!(
            (ours.tiles, ours.height, ours.width),
            (dims[0], dims[2], dims[3]),
            "{key}"
        );
        let expected = f32_values(expected);
        let differing = ours
            .data
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing,
            0,
            "{key}: {differing} of {} values differ from HF's (max |diff| {})",
            expected.len(),
            max_abs_diff(&ours.data, &expected)
        );
    }
}

/// `vit embed` of whole photos with the whole checkpoint and its processor: HF's tiles run
/// through HF's encoder, every tile's adapter tokens one after the other for `--pool tokens`,
/// their mean for `--pool mean`; the PIL backend (HF has none for it) and the class token
/// (one per tile) are refused.
#[test]
fn vit_embed_gives_hfs_tokens_of_every_tile() {
    let case = cases()
        .into_iter()
        .find(|c| c["name"] == "whole_p8_s48")
        .unwrap();
    let dir = fixture(case["dir"].as_str().unwrap());
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    let photos = case["photos"].as_array().unwrap();
    assert_eq!(photos.len(), 2);
    for photo in photos {
        let image = fixture(photo["image"]["fixture"].as_str().unwrap());
        let expected = &io[photo["key"].as_str().unwrap()];
        let (tokens, width) = expected.dims2().unwrap();
        let expected = f32_values(expected);
        let scratch = tempfile::tempdir().unwrap();
        for pool in ["tokens", "mean"] {
            let out = scratch.path().join(format!("{pool}.safetensors"));
            let args = [
                "embed",
                "-m",
                dir.to_str().unwrap(),
                image.to_str().unwrap(),
                "--pool",
                pool,
                "-o",
                out.to_str().unwrap(),
            ];
            let output = common::vit(&args);
            assert!(output.status.success(), "{}", common::stderr(&output));
            let written = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
            let cli = f32_values(&written["embeddings"]);
            let expected: Vec<f32> = match pool {
                "tokens" => expected.clone(),
                _ => (0..width)
                    .map(|c| {
                        (0..tokens).map(|t| expected[t * width + c]).sum::<f32>() / tokens as f32
                    })
                    .collect(),
            };
            assert_eq!(cli.len(), expected.len(), "{pool}");
            let diff = max_abs_diff(&cli, &expected);
            assert!(
                diff < 1e-4,
                "{}: --pool {pool}: max |diff| {diff} vs HF",
                image.display()
            );
        }
    }
    let image = fixture("preprocess/images/rgba_120x90.png");
    for (extra, message) in [
        (["--image-backend", "pil"], "Llama4ImageProcessor"),
        (["--pool", "cls"], "adapter"),
        (["--image-size", "64"], "48x48 only"),
    ] {
        let mut args = vec![
            "embed",
            "-m",
            dir.to_str().unwrap(),
            image.to_str().unwrap(),
        ];
        args.extend(extra);
        let output = common::vit(&args);
        assert_ne!(output.status.code(), Some(0), "{extra:?}");
        assert!(
            common::stderr(&output).contains(message),
            "{extra:?}: {}",
            common::stderr(&output)
        );
    }
}

/// `vit convert` writes the ViT family's HF layouts: a Llama 4 folder is refused by name
/// before its weights are read, and nothing is written.
#[test]
fn vit_convert_refuses_llama4_folders_by_name() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("out");
    let dir = fixture("llama4/vision_p4_s32");
    let output = common::vit(&[
        "convert",
        dir.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", common::stderr(&output));
    assert!(
        common::stderr(&output).contains("HF llama4"),
        "{}",
        common::stderr(&output)
    );
    assert!(!out.exists());
}
