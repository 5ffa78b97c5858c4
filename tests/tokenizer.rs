//! Tokenization identical to HF's fast CLIP tokenizer (transformers' `CLIPTokenizer`) on the
//! 230 texts of `tests/fixtures/generate.py --only clip`: the real OpenAI vocabulary built
//! from `vocab.json` + `merges.txt`, and a small vocabulary read from HF's own
//! `tokenizer.json` and from its `vocab.json` + `merges.txt`, truncated at 77 tokens.

mod common;

use common::fixture;
use serde_json::Value;
use vit::tokenizer::{Padding, TextTokenizer, TokenizerFiles};

fn texts() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("clip/tokenizer/texts.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn check(files: TokenizerFiles, key: &str) {
    let tokenizer = TextTokenizer::load(&files, 77, Padding::None).unwrap();
    let texts = texts();
    assert!(texts.len() >= 200);
    let mut truncated = 0;
    for case in &texts {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ours = tokenizer.encode(text).unwrap();
        assert_eq!(ours, expected, "{key} of {text:?}");
        truncated += usize::from(ours.len() == 77);
    }
    assert!(
        truncated >= 5,
        "the texts include some longer than the context"
    );
}

#[test]
fn the_real_clip_vocabulary_from_vocab_and_merges_tokenizes_as_hf() {
    let dir = fixture("clip/tokenizer");
    check(TokenizerFiles::in_folder(&dir).unwrap(), "input_ids");
}

#[test]
fn hf_tokenizer_json_tokenizes_as_hf() {
    let files = TokenizerFiles::in_folder(&fixture("clip/clip_p32_s64")).unwrap();
    assert!(matches!(files, TokenizerFiles::Json(_)));
    check(files, "small_input_ids");
}

#[test]
fn a_small_vocabulary_from_vocab_and_merges_tokenizes_as_hf() {
    let files = TokenizerFiles::in_folder(&fixture("clip/clip_p16_s48")).unwrap();
    assert!(matches!(files, TokenizerFiles::ClipBpe { .. }));
    check(files, "small_input_ids");
}

#[test]
fn a_broken_tokenizer_json_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, "{\"model\": 3}").unwrap();
    let err = TextTokenizer::load(&TokenizerFiles::Json(path), 77, Padding::None)
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("tokenizer.json"), "{err:#}");
}
