//! Parity with HF transformers' `DINOv3ViTModel` on the golden fixtures of
//! `tests/fixtures/generate.py --only dinov3` (HF's own random initialisation, odd sizes, a
//! plain and a gated MLP, registers, each bias flag both ways): every token, the class token
//! (`pooler_output`) and the patch mean, at the config's size and at another resolution, on
//! every CPU kernel and on the differentiable path.

mod common;

use candle_core::Device;
use common::{f32_values, fixture, max_abs_diff};
use serde_json::Value;
use vit::model::{EmbeddingKind, LoadedModel, ModelFiles, ModelOptions};

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("dinov3/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every case on the kernels of `model`; with `tracked`, over weights that track gradients
/// (candle's ops, as training runs them).
fn check_dinov3(model: ModelOptions, tracked: bool) {
    let cases = cases();
    assert_eq!(cases.len(), 3, "expected every DINOv3 case");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let dir = fixture(case["dir"].as_str().unwrap());
        let (loaded, io) = common::load_fixture_model(name, &dir, model, tracked);
        assert!(!loaded.model.has_head(), "{name}");
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
                let what = format!("{name} {output} vs HF at {size}");
                common::assert_close(&what, &ours, &io[&format!("{output}_{i}")]);
            }
        }
    }
}

#[test]
fn dinov3_matches_hf_transformers_on_every_cpu_kernel() {
    common::on_every_kernel(|model| check_dinov3(model, false));
}

#[test]
fn dinov3_matches_on_the_differentiable_path() {
    check_dinov3(ModelOptions::default(), true);
}

/// HF's `DINOv3ViTImageProcessor` (torchvision backend, its only one: rescale, then an
/// antialiased resize of the floats, then normalize) on a downscaled JPEG and an upscaled
/// RGBA PNG. The generator stores its pixels in f16, so each value is within half an f16
/// step of HF's, `|x| 2^-11`, plus our f32 arithmetic's share; resizing the 8-bit image
/// first, as the other processors do, is off by up to 0.017.
#[test]
fn dinov3_preprocessing_matches_hf_torchvision_backend() {
    use vit::preprocess::{load_rgb, PreprocessConfig};
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("dinov3/preprocess/cases.json")).unwrap(),
    )
    .unwrap();
    let config =
        PreprocessConfig::from_file(&fixture("dinov3/preprocess/preprocessor_config.json"))
            .unwrap();
    assert!(config.rescale_before_resize);
    let pixels = candle_core::safetensors::load(
        fixture("dinov3/preprocess/pixels.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for image in cases["images"].as_array().unwrap() {
        let path = fixture(image["image"]["fixture"].as_str().unwrap());
        let key = image["key"].as_str().unwrap();
        let ours = config.pixel_values(&load_rgb(&path).unwrap());
        assert_eq!((ours.height, ours.width), (224, 224), "{key}");
        let expected = f32_values(&pixels[key]);
        assert_eq!(ours.data.len(), expected.len(), "{key}");
        let mut worst = 0f32;
        for (got, want) in ours.data.iter().zip(&expected) {
            let bound = want.abs() * 2f32.powi(-11) + 1e-5;
            assert!(
                (got - want).abs() <= bound,
                "{key}: {got} vs HF's {want} (bound {bound})"
            );
            worst = worst.max((got - want).abs());
        }
        eprintln!("{key}: max |diff| {worst}");
    }
}

/// `vit embed` of a DINOv3 folder without `preprocessor_config.json` preprocesses as
/// `DINOv3ViTImageProcessor`'s defaults and gives the library's class-token embedding; the
/// PIL backend, which HF does not have for it, is refused.
#[test]
fn vit_embed_runs_dinov3_folders_with_their_processor() {
    use vit::preprocess::{load_rgb, PreprocessConfig};
    let dir = fixture("dinov3/gated_reg_p4_s24");
    let image = fixture("preprocess/images/odd_301x157.jpg");
    let args = [
        "embed",
        "-m",
        dir.to_str().unwrap(),
        image.to_str().unwrap(),
        "--format",
        "jsonl",
    ];
    let output = common::vit(&args);
    assert!(output.status.success(), "{}", common::stderr(&output));
    let rows = common::jsonl(&common::stdout(&output));
    let cli: Vec<f32> = rows[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();

    let options = common::cpu_f32();
    let loaded = LoadedModel::load(&ModelFiles::local(&dir).unwrap(), &options).unwrap();
    assert_eq!(loaded.preprocess, PreprocessConfig::dinov3());
    let pixels = loaded.preprocess.pixel_values(&load_rgb(&image).unwrap());
    let tensor = candle_core::Tensor::from_vec(
        pixels.data,
        (1, 3, pixels.height, pixels.width),
        &Device::Cpu,
    )
    .unwrap();
    let library = f32_values(&loaded.model.embed(&tensor, EmbeddingKind::Class).unwrap());
    assert_eq!(cli.len(), 64);
    assert!(max_abs_diff(&cli, &library) < 1e-5);

    let mut refused = args.to_vec();
    refused.extend(["--image-backend", "pil"]);
    let output = common::vit(&refused);
    assert_eq!(output.status.code(), Some(2));
    assert!(common::stderr(&output).contains("DINOv3ViTImageProcessor"));
}
