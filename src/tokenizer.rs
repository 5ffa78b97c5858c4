//! Text tokenizers of the contrastive models (CLIP, SigLIP), on HF's `tokenizers`: a repo's
//! `tokenizer.json`, or, for repos that ship only the files of HF's slow tokenizer, the
//! tokenizer HF builds from them (CLIP's `vocab.json` + `merges.txt`, SigLIP's
//! `spiece.model`, see [`sentencepiece`]).

pub mod sentencepiece;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokenizers::{Tokenizer, TruncationParams};

/// The tokenizer files a model folder holds, in order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerFiles {
    /// HF's serialized fast tokenizer.
    Json(PathBuf),
    /// CLIP's byte-level BPE: `vocab.json` and `merges.txt`.
    ClipBpe { vocab: PathBuf, merges: PathBuf },
    /// SigLIP's sentencepiece model, `spiece.model`.
    SentencePiece(PathBuf),
}

impl TokenizerFiles {
    /// The tokenizer among the files `exists` reports, each file's path from `fetch` (which
    /// may download it).
    pub fn locate(
        exists: impl Fn(&str) -> bool,
        fetch: impl Fn(&str) -> Result<PathBuf>,
    ) -> Result<Option<Self>> {
        if exists("tokenizer.json") {
            return Ok(Some(Self::Json(fetch("tokenizer.json")?)));
        }
        if exists("vocab.json") && exists("merges.txt") {
            return Ok(Some(Self::ClipBpe {
                vocab: fetch("vocab.json")?,
                merges: fetch("merges.txt")?,
            }));
        }
        if exists("spiece.model") {
            return Ok(Some(Self::SentencePiece(fetch("spiece.model")?)));
        }
        Ok(None)
    }

    /// The tokenizer files of a local folder.
    pub fn in_folder(folder: &Path) -> Option<Self> {
        Self::locate(
            |name| folder.join(name).is_file(),
            |name| Ok(folder.join(name)),
        )
        .ok()
        .flatten()
    }
}

/// A text's token ids: the text's own, then any padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// How many of `ids` are the text's (the rest is padding, which no token attends to).
    pub attended: usize,
}

/// A tokenizer with the truncation and padding of its model's processor.
pub struct TextTokenizer {
    inner: Tokenizer,
    max_length: usize,
    /// The padding id, for a model whose texts are padded to `max_length`.
    pad_id: Option<u32>,
}

impl TextTokenizer {
    /// Loads `files`; texts are truncated to `max_length` tokens (special tokens included),
    /// as HF's `truncation=True, max_length=...` does, and, when `padded`, padded to it with
    /// the tokenizer's padding token as `padding="max_length"` does (SigLIP, trained so).
    /// Unpadded texts run at their own length: CLIP's causal text tower gives the same
    /// embedding as HF's batch padded to the longest, whose padding it never attends to.
    pub fn load(files: &TokenizerFiles, max_length: usize, padded: bool) -> Result<Self> {
        let (mut inner, path) = match files {
            TokenizerFiles::Json(path) => {
                let tokenizer = crate::panics::catch("cannot read the tokenizer", || {
                    Tokenizer::from_file(path).map_err(|e| anyhow::anyhow!("{e}"))
                })
                .with_context(|| format!("{}", path.display()))?;
                // Without one, the start and end tokens the text tower pools on would be
                // dropped silently.
                if tokenizer.get_post_processor().is_none() {
                    bail!(
                        "{}: no post_processor (the tokenizer would add no start and end \
                         tokens)",
                        path.display()
                    );
                }
                (tokenizer, path)
            }
            TokenizerFiles::ClipBpe { vocab, merges } => (clip_bpe(vocab, merges)?, vocab),
            TokenizerFiles::SentencePiece(path) => (
                crate::panics::catch("cannot build the tokenizer", || {
                    sentencepiece::siglip_tokenizer(path)
                })?,
                path,
            ),
        };
        let pad_id = match padded {
            false => None,
            true => Some(pad_id(&inner).with_context(|| {
                format!(
                    "{}: no padding token (a padding config, {}, or <pad>)",
                    path.display(),
                    sentencepiece::SIGLIP_EOS
                )
            })?),
        };
        if max_length < 2 {
            bail!("a text context of {max_length} tokens is too short");
        }
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| anyhow::anyhow!("cannot set truncation: {e}"))?;
        inner.with_padding(None);
        Ok(Self {
            inner,
            max_length,
            pad_id,
        })
    }

    /// The token ids of `text` with the model's special tokens, truncated and padded.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("cannot tokenize {text:?}: {e}"))?;
        let mut ids = encoding.get_ids().to_vec();
        let attended = ids.len();
        if let Some(pad_id) = self.pad_id {
            ids.resize(self.max_length, pad_id);
        }
        Ok(Encoded { ids, attended })
    }

    /// The id of `token` in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// The padding id of a tokenizer: its padding config's, else that of SigLIP's `</s>` (which
/// `SiglipTokenizer` pads with) or of `<pad>`.
fn pad_id(tokenizer: &Tokenizer) -> Option<u32> {
    tokenizer
        .get_padding()
        .map(|padding| padding.pad_id)
        .or_else(|| tokenizer.token_to_id(sentencepiece::SIGLIP_EOS))
        .or_else(|| tokenizer.token_to_id("<pad>"))
}

/// CLIP's special tokens, as `CLIPTokenizer` names them by default.
const CLIP_BOS: &str = "<|startoftext|>";
const CLIP_EOS: &str = "<|endoftext|>";

/// The tokenizer `CLIPTokenizer` builds from `vocab.json` and `merges.txt` (transformers 5,
/// `models/clip/tokenization_clip.py`): NFC, whitespace runs to one space, lower case; split
/// on CLIP's word pattern, then byte-level; BPE with `</w>` ending words; `<|startoftext|>`
/// and `<|endoftext|>` around each text.
fn clip_bpe(vocab_path: &Path, merges_path: &Path) -> Result<Tokenizer> {
    let vocab_text = std::fs::read_to_string(vocab_path)
        .with_context(|| format!("{}: cannot read", vocab_path.display()))?;
    let vocab: serde_json::Map<String, Value> = serde_json::from_str(&vocab_text)
        .with_context(|| format!("{}: not a JSON object of token ids", vocab_path.display()))?;
    let merges_text = std::fs::read_to_string(merges_path)
        .with_context(|| format!("{}: cannot read", merges_path.display()))?;
    let mut merges = Vec::new();
    for (number, line) in merges_text.lines().enumerate() {
        if (number == 0 && line.starts_with("#version")) || line.is_empty() {
            continue;
        }
        let Some((left, right)) = line.split_once(' ') else {
            bail!(
                "{}: line {}: not a merge (two tokens separated by a space)",
                merges_path.display(),
                number + 1
            );
        };
        merges.push(json!([left, right]));
    }
    let id = |token: &str| {
        vocab
            .get(token)
            .and_then(Value::as_u64)
            .with_context(|| format!("{}: no id for {token}", vocab_path.display()))
    };
    let (bos, eos) = (id(CLIP_BOS)?, id(CLIP_EOS)?);
    let special = |content: &str, id: u64| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
                            "trim_offsets": true, "use_regex": true});
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(CLIP_BOS, bos), special(CLIP_EOS, eos)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
            {"type": "Lowercase"},
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": CLIP_WORDS}, "behavior": "Removed",
             "invert": true},
            byte_level,
        ]},
        "post_processor": {"type": "RobertaProcessing", "sep": [CLIP_EOS, eos],
                           "cls": [CLIP_BOS, bos], "trim_offsets": false,
                           "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": CLIP_EOS,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    Tokenizer::from_bytes(serde_json::to_vec(&spec)?).map_err(|e| {
        anyhow::anyhow!(
            "{}, {}: cannot build CLIP's tokenizer: {e}",
            vocab_path.display(),
            merges_path.display()
        )
    })
}

/// CLIP's word pattern (its special tokens, contractions, letter runs, single digits, runs of
/// other non-space characters).
const CLIP_WORDS: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merges_line_without_a_space_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let vocab = dir.path().join("vocab.json");
        let merges = dir.path().join("merges.txt");
        std::fs::write(
            &vocab,
            r#"{"a": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}"#,
        )
        .unwrap();
        std::fs::write(&merges, "#version: 0.2\nab\n").unwrap();
        let err = clip_bpe(&vocab, &merges).err().unwrap();
        assert!(format!("{err:#}").contains("merges.txt: line 2"), "{err:#}");
    }

    #[test]
    fn a_vocabulary_without_special_tokens_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let vocab = dir.path().join("vocab.json");
        let merges = dir.path().join("merges.txt");
        std::fs::write(&vocab, r#"{"a": 0}"#).unwrap();
        std::fs::write(&merges, "").unwrap();
        let err = clip_bpe(&vocab, &merges).err().unwrap();
        assert!(
            format!("{err:#}").contains("no id for <|startoftext|>"),
            "{err:#}"
        );
    }
}
