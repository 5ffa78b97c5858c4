//! Parity with HF transformers across the ViT family (DeiT, DINOv2 with and without
//! registers, ViTModel) on the golden fixtures of `tests/fixtures/generate.py --only family`:
//! HF's logits and its class-token and mean-patch embeddings, on every CPU kernel and on the
//! differentiable path.

mod common;

use candle_core::{DType, Device};
use common::{f32_values, fixture, max_abs_diff};
use serde_json::Value;
use vit::kernels::Isa;
use vit::model::{EmbeddingKind, LoadOptions, LoadedModel, ModelFiles, ModelOptions};

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("family/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every case on the kernels of `model`; with `tracked`, over weights that track gradients
/// (candle's ops, as training runs them).
fn check_family(model: ModelOptions, tracked: bool) {
    let cases = cases();
    assert!(cases.len() >= 8, "expected every family case");
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
        let unused: Vec<&String> = loaded
            .unused_tensors
            .iter()
            .filter(|n| !n.contains("mask_token") && !n.contains("pooler"))
            .collect();
        assert!(unused.is_empty(), "{name}: unused {unused:?}");
        let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
        let pixels = &io["pixel_values"];
        let outputs = case["outputs"].as_array().unwrap();
        for output in outputs {
            let output = output.as_str().unwrap();
            let ours = match output {
                "logits" => loaded.model.forward(pixels),
                "cls" => loaded.model.embed(pixels, EmbeddingKind::Class),
                "mean" => loaded.model.embed(pixels, EmbeddingKind::Mean),
                other => panic!("{name}: unknown output {other}"),
            }
            .unwrap_or_else(|e| panic!("{name} {output}: {e:#}"));
            let diff = max_abs_diff(&f32_values(&ours), &f32_values(&io[output]));
            assert!(diff < 1e-4, "{name}: max |{output} diff| {diff} vs HF");
        }
        assert_eq!(
            loaded.model.has_head(),
            outputs.iter().any(|o| o == "logits"),
            "{name}"
        );
    }
}

#[test]
fn family_outputs_match_hf_transformers_on_every_cpu_kernel() {
    for isa in Isa::supported() {
        eprintln!("checking the {} kernels", isa.name());
        check_family(
            ModelOptions {
                isa,
                ..ModelOptions::default()
            },
            false,
        );
    }
}

#[test]
fn family_outputs_match_on_the_differentiable_path() {
    check_family(ModelOptions::default(), true);
}

/// Tensor names stored in a safetensors file.
fn stored_names(path: &std::path::Path) -> std::collections::BTreeSet<String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    metadata.tensors().into_keys().collect()
}

#[test]
fn family_models_are_written_back_in_their_own_hf_layout() {
    use vit::model::save::write_model_folder;
    use vit::model::weights::{expected_tensors, read_weights_as};
    use vit::model::Layout;
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let dir = fixture(case["dir"].as_str().unwrap());
        let config_json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let layout = Layout::of_config(&config_json).unwrap();
        let mut weights = read_weights_as(&dir.join("model.safetensors"), Some(layout)).unwrap();
        let config = layout.config(&config_json, &weights, None).unwrap();
        let kept: std::collections::HashSet<String> = expected_tensors(&config)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        weights.retain(|n, _| kept.contains(n));
        let out = tempfile::tempdir().unwrap();
        let preprocess = vit::preprocess::PreprocessConfig::default();
        write_model_folder(
            out.path(),
            &config,
            Some(&config_json),
            &weights,
            &preprocess,
        )
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let mut original = stored_names(&dir.join("model.safetensors"));
        original.retain(|n| !n.contains("mask_token") && !n.contains("pooler"));
        assert_eq!(
            stored_names(&out.path().join("model.safetensors")),
            original,
            "{name}: tensor names as HF's save_pretrained writes them"
        );
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
                .unwrap();
        for key in [
            "model_type",
            "architectures",
            "hidden_size",
            "intermediate_size",
        ] {
            if config_json.get(key).is_some() {
                assert_eq!(written[key], config_json[key], "{name}: {key}");
            }
        }
        let reloaded =
            LoadedModel::load(&ModelFiles::local(out.path()).unwrap(), &common::cpu_f32())
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(reloaded.config, config, "{name}");
    }
}

fn timm_cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("timm_family/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// timm hub folders (timm's `save_for_hf`) load as timm runs them: logits and the pooled
/// embedding timm's head reads, on every kernel; preprocessing from `pretrained_cfg` as timm's
/// eval transform on real photos; options the encoder lacks are refused by name.
#[test]
fn timm_hub_folders_match_timm() {
    let cases = timm_cases();
    assert!(cases.len() >= 7, "expected every timm case");
    for isa in Isa::supported() {
        let options = LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            num_heads: None,
            model: ModelOptions {
                isa,
                ..ModelOptions::default()
            },
        };
        for case in &cases {
            let name = case["name"].as_str().unwrap();
            let dir = fixture(case["dir"].as_str().unwrap());
            let files = ModelFiles::local(&dir).unwrap();
            let loaded = LoadedModel::load(&files, &options);
            if name.starts_with("unsupported_") {
                let err = format!("{:#}", loaded.err().expect("an unsupported variant loads"));
                assert!(err.contains("qk_norm"), "{name}: {err}");
                continue;
            }
            let loaded = loaded.unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(
                loaded.unused_tensors.is_empty(),
                "{name}: {:?}",
                loaded.unused_tensors
            );
            let io =
                candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
            let pixels = &io["pixel_values"];
            for output in case["outputs"].as_array().unwrap() {
                let output = output.as_str().unwrap();
                let (ours, theirs) = match output {
                    "logits" => (loaded.model.forward(pixels), &io["logits"]),
                    "pooled" => (
                        loaded.model.embed(pixels, EmbeddingKind::Auto),
                        &io["pooled"],
                    ),
                    "photo_logits" => {
                        let photo = case["photo"].as_str().unwrap();
                        let Some(shared) = common::shared_dir() else {
                            continue;
                        };
                        let image =
                            vit::preprocess::load_rgb(&shared.join("images").join(photo)).unwrap();
                        let values = loaded.preprocess.pixel_values(&image);
                        let expected = f32_values(&io["photo_pixel_values"]);
                        let diff = max_abs_diff(&values.data, &expected);
                        assert!(
                            diff < 0.02,
                            "{name}: pixel values {diff} from timm's transform"
                        );
                        let input = candle_core::Tensor::from_vec(
                            values.data,
                            (1, 3, values.height, values.width),
                            &Device::Cpu,
                        )
                        .unwrap();
                        (loaded.model.forward(&input), &io["photo_logits"])
                    }
                    other => panic!("{name}: unknown output {other}"),
                };
                let ours = ours.unwrap_or_else(|e| panic!("{name} {output}: {e:#}"));
                let diff = max_abs_diff(&f32_values(&ours), &f32_values(theirs));
                assert!(
                    diff < 1e-4,
                    "{name} ({}): max |{output} diff| {diff} vs timm",
                    isa.name()
                );
            }
        }
    }
}
