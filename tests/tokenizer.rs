//! Tokenization identical to HF's on the 230 texts of `tests/fixtures/generate.py`: its fast
//! CLIP tokenizer (transformers' `CLIPTokenizer`, `--only clip`) with the real OpenAI
//! vocabulary built from `vocab.json` + `merges.txt`, and a small vocabulary read from HF's
//! own `tokenizer.json` and from its `vocab.json` + `merges.txt`, truncated at 77 tokens; and
//! its `SiglipTokenizer` (`--only siglip`) on a unigram `spiece.model` trained by
//! sentencepiece, padded to 64 tokens and truncated as the zero-shot pipeline does.

mod common;

use common::fixture;
use serde_json::Value;
use vit::tokenizer::{TextTokenizer, TokenizerFiles};

fn texts(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture(path)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn check(files: TokenizerFiles, key: &str) {
    let tokenizer = TextTokenizer::load(&files, 77, false).unwrap();
    let texts = texts("clip/tokenizer/texts.json");
    assert!(texts.len() >= 200);
    let mut truncated = 0;
    for case in &texts {
        let text = case["text"].as_str().unwrap();
        let ours = tokenizer.encode(text).unwrap();
        assert_eq!(ours.ids, ids(&case[key]), "{key} of {text:?}");
        assert_eq!(ours.attended, ours.ids.len(), "unpadded");
        truncated += usize::from(ours.ids.len() == 77);
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
    let err = TextTokenizer::load(&TokenizerFiles::Json(path), 77, false)
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("tokenizer.json"), "{err:#}");
}

#[test]
fn a_sentencepiece_model_tokenizes_as_hf_siglip() {
    let files = TokenizerFiles::in_folder(&fixture("siglip/tokenizer")).unwrap();
    assert!(matches!(files, TokenizerFiles::SentencePiece(_)));
    let tokenizer = TextTokenizer::load(&files, 64, true).unwrap();
    let texts = texts("siglip/tokenizer/texts.json");
    assert!(texts.len() >= 200);
    let (mut truncated, mut unknown) = (0, 0);
    let unk = tokenizer.token_id("<unk>").unwrap();
    for case in &texts {
        let text = case["text"].as_str().unwrap();
        let ours = tokenizer.encode(text).unwrap();
        assert_eq!(ours.ids, ids(&case["input_ids"]), "input_ids of {text:?}");
        assert_eq!(
            ours.attended as u64,
            case["attended"].as_u64().unwrap(),
            "{text:?}"
        );
        truncated += usize::from(ours.attended == 64);
        unknown += usize::from(ours.ids.contains(&unk));
    }
    assert!(
        truncated >= 4,
        "the texts include some longer than the context"
    );
    assert!(
        unknown >= 5,
        "the texts include characters the model does not know"
    );
}

#[test]
fn a_broken_sentencepiece_model_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spiece.model");
    std::fs::write(&path, b"\x0a\xff\x01").unwrap();
    let err = TextTokenizer::load(&TokenizerFiles::SentencePiece(path), 64, true)
        .err()
        .unwrap();
    let message = format!("{err:#}");
    assert!(
        message.contains("spiece.model: not a sentencepiece model"),
        "{message}"
    );
}
