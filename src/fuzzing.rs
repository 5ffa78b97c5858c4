//! The entry points of the fuzz targets (`fuzz/`), one per parser of user input, shared with
//! the stable test that replays their corpora and every crash found so far
//! (`tests/fuzz_corpora.rs`). Each takes arbitrary bytes and may fail, but must not panic,
//! hang or exhaust memory.

use std::path::Path;

use crate::preprocess::{decode_rgb, PreprocessConfig};

/// Images larger than this are decoded but not preprocessed (that would only time the
/// resize).
const MAX_PREPROCESSED_PIXELS: u64 = 1 << 20;

/// Decodes an image file's bytes and, when it decodes and is small, preprocesses it on both
/// of HF's backends.
pub fn image(data: &[u8]) {
    let Ok(image) = decode_rgb(data) else {
        return;
    };
    if image.width() as u64 * image.height() as u64 <= MAX_PREPROCESSED_PIXELS {
        let config = PreprocessConfig::default();
        for backend in [
            crate::preprocess::ImageBackend::HfPil,
            crate::preprocess::ImageBackend::HfTorchvision,
        ] {
            let values = config.with_backend(backend).pixel_values(&image);
            assert_eq!(values.data.len(), 3 * values.height * values.width);
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
    if height as u64 * width as u64 <= MAX_PREPROCESSED_PIXELS {
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
