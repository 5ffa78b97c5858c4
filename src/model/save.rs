//! Writing HF-format model folders: `config.json`, `model.safetensors`,
//! `preprocessor_config.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde_json::Value;

use super::config::ViTConfig;
use super::layouts::Layout;
use crate::preprocess::PreprocessConfig;

/// Writes tensors as safetensors with HF's `{"format": "pt"}` metadata, in name order.
pub fn save_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let ordered: BTreeMap<&String, Tensor> = tensors
        .iter()
        .map(|(name, t)| Ok((name, t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(ordered, Some(metadata), path)
        .with_context(|| format!("{}: cannot write safetensors", path.display()))
}

/// Writes a complete HF model folder into `dir` (an existing, usually staged, folder), in the
/// HF layout of the config's variant: `tensors` by canonical name are stored under that
/// layout's names. `base_config` keeps the other keys of a source `config.json`.
pub fn write_model_folder(
    dir: &Path,
    config: &ViTConfig,
    base_config: Option<&Value>,
    tensors: &HashMap<String, Tensor>,
    preprocess: &PreprocessConfig,
) -> Result<()> {
    save_safetensors(
        &dir.join("model.safetensors"),
        &stored_tensors(config, tensors)?,
    )?;
    write_json(&dir.join("config.json"), &config.to_hf_json(base_config)?)?;
    write_json(
        &dir.join("preprocessor_config.json"),
        &preprocess.to_hf_json(),
    )?;
    Ok(())
}

/// `tensors` (by canonical name) under the names the HF layout of `config` stores them.
pub fn stored_tensors(
    config: &ViTConfig,
    tensors: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>> {
    let layout = Layout::of_variant(&config.variant)?;
    Ok(tensors
        .iter()
        .map(|(name, tensor)| (layout.stored_name(name, config), tensor.clone()))
        .collect())
}

/// Writes pretty-printed JSON with a final newline.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::{check_state_dict, expected_tensors, read_weights};
    use crate::model::ModelFiles;
    use candle_core::DType;

    #[test]
    fn a_written_folder_loads_back_identically() {
        let config = ViTConfig::from_json(
            r#"{"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 16, "image_size": 8, "patch_size": 4, "num_labels": 3}"#,
        )
        .unwrap();
        let tensors: HashMap<String, Tensor> = expected_tensors(&config)
            .into_iter()
            .map(|(name, shape)| (name, Tensor::randn(0f32, 1., shape, &Device::Cpu).unwrap()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let preprocess = PreprocessConfig::default();
        write_model_folder(dir.path(), &config, None, &tensors, &preprocess).unwrap();
        let files = ModelFiles::local(dir.path()).unwrap();
        assert_eq!(
            ViTConfig::from_file(files.config.as_ref().unwrap()).unwrap(),
            config
        );
        assert_eq!(
            PreprocessConfig::from_file(files.preprocessor.as_ref().unwrap()).unwrap(),
            preprocess
        );
        let loaded = read_weights(&files.weights).unwrap();
        assert!(check_state_dict(&loaded, &config).unwrap().is_empty());
        for (name, tensor) in &tensors {
            let diff = (tensor - &loaded[name])
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(
                diff.to_dtype(DType::F32)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
                0.0
            );
        }
    }
}
