//! The entry points of the fuzz targets (`fuzz/`), one per parser of user input, shared with
//! the stable test that replays their corpora and every crash found so far
//! (`tests/fuzz_corpora.rs`). Each takes arbitrary bytes and may fail, but must not panic,
//! hang or exhaust memory.
//!
//! The parsers that read files (weights, tokenizer files) are given the bytes as files in
//! a scratch folder of this process; the targets that need two files take them joined by a
//! NUL byte, which none of their seeds' text files holds.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device};

use crate::model::{LoadOptions, LoadedModel, ModelFiles};

use crate::preprocess::{decode_rgb, PreprocessConfig};

/// Images larger than this are decoded but not preprocessed (that would only time the
/// resize).
const MAX_PREPROCESSED_PIXELS: u64 = 1 << 20;

/// Decodes an image file's bytes and, when it decodes and is small, preprocesses it on both
/// of HF's backends, as DINOv3's processor does (resizing the rescaled floats) and as Llama
/// 4's does (cutting it into tiles).
pub fn image(data: &[u8]) {
    let Ok(image) = decode_rgb(data) else {
        return;
    };
    if image.width() as u64 * image.height() as u64 <= MAX_PREPROCESSED_PIXELS {
        let config = PreprocessConfig::default();
        let pipelines = [
            config.with_backend(crate::preprocess::ImageBackend::HfPil),
            config.with_backend(crate::preprocess::ImageBackend::HfTorchvision),
            PreprocessConfig::dinov3(),
            // Llama 4's tiling, with small tiles
            PreprocessConfig::llama4(28),
        ];
        for pipeline in pipelines {
            let values = pipeline.pixel_values(&image);
            assert_eq!(
                values.data.len(),
                values.tiles * 3 * values.height * values.width
            );
        }
    }
}

/// Parses `preprocessor_config.json` text into a checked pipeline, and runs it on a small
/// image when it parses.
pub fn preprocessor_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = PreprocessConfig::from_json(text) else {
        return;
    };
    let (height, width) = config.output_size(7, 5);
    let tiles = config
        .tiling
        .map_or(1, |tiling| tiling.max_tiles as u64 + 1);
    if tiles * height as u64 * width as u64 <= MAX_PREPROCESSED_PIXELS {
        config.pixel_values(&image::RgbImage::new(7, 5));
    }
}

/// Parses `config.json` text of any layout into a checked architecture.
pub fn model_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::model::ViTConfig::from_json(text);
    }
}

/// Parses a sentencepiece `ModelProto` and, when it parses, builds SigLIP's tokenizer on it
/// and tokenizes a text.
pub fn sentencepiece(data: &[u8]) {
    use crate::tokenizer::sentencepiece::{siglip_tokenizer_of, SentencePieceModel};
    let Ok(model) = SentencePieceModel::parse(data) else {
        return;
    };
    if let Ok(tokenizer) = siglip_tokenizer_of(model, Path::new("spiece.model")) {
        let _ = tokenizer.encode("A photo of a café, 猫 ½!", true);
    }
}

/// This process's scratch folder for the targets' files.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vit-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch folder for the fuzz targets");
        dir
    })
}

/// Writes `files` (name, bytes) into a fresh scratch subfolder `name`, and returns it.
fn write_files(name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = scratch().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch subfolder");
    for (file, bytes) in files {
        std::fs::write(dir.join(file), bytes).expect("a scratch file");
    }
    dir
}

/// `data` split at its first NUL byte.
fn split_at_nul(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = data.iter().position(|&b| b == 0)?;
    Some((&data[..at], &data[at + 1..]))
}

/// Loads the model of `files` on the CPU in f32 and, when it loads, runs it on one image;
/// whether both went through.
fn load_and_run(files: &ModelFiles) -> bool {
    let options = LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        num_heads: None,
        model: Default::default(),
    };
    let Ok(loaded) = LoadedModel::load(files, &options) else {
        return false;
    };
    let config = &loaded.config;
    let (height, width) = (config.image_size, config.image_size);
    if crate::classifier::forward_bytes_estimate(config, height, width) > 1 << 28 {
        return false; // a model too big to run in a fuzzing loop
    }
    let pixels = candle_core::Tensor::zeros((1, 3, height, width), DType::F32, &Device::Cpu);
    pixels.is_ok_and(|pixels| loaded.model.forward(&pixels).is_ok())
}

/// Reads a `.safetensors` file (header, then the mapped tensors) as a model's only file,
/// its layout and sizes inferred from the tensors, and runs the model it makes; whether it
/// loaded and ran (the same for the targets below).
pub fn safetensors(data: &[u8]) -> bool {
    let dir = write_files("safetensors", &[("model.safetensors", data)]);
    load_and_run(&ModelFiles {
        config: None,
        weights: dir.join("model.safetensors"),
        preprocessor: None,
        tokenizer: None,
    })
}

/// Reads a PyTorch checkpoint (zip or legacy pickle) as a model's only file, and runs the
/// model it makes.
pub fn pickle(data: &[u8]) -> bool {
    let dir = write_files("pickle", &[("pytorch_model.bin", data)]);
    load_and_run(&ModelFiles {
        config: None,
        weights: dir.join("pytorch_model.bin"),
        preprocessor: None,
        tokenizer: None,
    })
}

/// An int8 folder: `config.json`, NUL, `model.safetensors` (int8 weights with their scales),
/// loaded and run.
pub fn int8_folder(data: &[u8]) -> bool {
    let Some((config, weights)) = split_at_nul(data) else {
        return false;
    };
    let files = [("config.json", config), ("model.safetensors", weights)];
    let dir = write_files("int8_folder", &files);
    load_and_run(&ModelFiles {
        config: Some(dir.join("config.json")),
        weights: dir.join("model.safetensors"),
        preprocessor: None,
        tokenizer: None,
    })
}

/// CLIP's tokenizer files: a `tokenizer.json`, or `vocab.json`, NUL, `merges.txt`; loaded
/// and run on a text.
pub fn clip_tokenizer(data: &[u8]) -> bool {
    use crate::tokenizer::{TextTokenizer, TokenizerFiles};
    let files = match split_at_nul(data) {
        Some((vocab, merges)) => {
            let dir = write_files("clip_bpe", &[("vocab.json", vocab), ("merges.txt", merges)]);
            TokenizerFiles::ClipBpe {
                vocab: dir.join("vocab.json"),
                merges: dir.join("merges.txt"),
            }
        }
        None => {
            let dir = write_files("clip_json", &[("tokenizer.json", data)]);
            TokenizerFiles::Json(dir.join("tokenizer.json"))
        }
    };
    TextTokenizer::load(&files, 77, false)
        .is_ok_and(|tokenizer| tokenizer.encode("A photo of a café, 猫 ½! a cat").is_ok())
}
