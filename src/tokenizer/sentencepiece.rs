//! A sentencepiece model file (`spiece.model`): its `ModelProto` protobuf read with a small
//! wire-format reader (pieces, the model type, the unknown id, the normalizer spec), and
//! SigLIP's tokenizer built from it as transformers' `SiglipTokenizer` tokenizes.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{
    Lowercase, NormalizerWrapper, Precompiled, Prepend, Replace, Sequence, Strip,
};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

/// The kind of a piece (`ModelProto.SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceKind,
}

/// What a sentencepiece model holds that tokenizing needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SentencePieceModel {
    pub pieces: Vec<Piece>,
    /// `TrainerSpec.model_type`: 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    pub unk_id: usize,
    pub byte_fallback: bool,
    /// `NormalizerSpec.precompiled_charsmap` (empty for the identity normalizer).
    pub precompiled_charsmap: Vec<u8>,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

impl SentencePieceModel {
    /// Reads a `spiece.model` file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        Self::parse(&bytes)
            .with_context(|| format!("{}: not a sentencepiece model", path.display()))
    }

    /// Parses the serialized `ModelProto`.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut model = Self {
            pieces: Vec::new(),
            model_type: 1,
            unk_id: 0,
            byte_fallback: false,
            precompiled_charsmap: Vec::new(),
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        };
        let mut reader = Reader::new(bytes);
        let mut has_normalizer_spec = false;
        while let Some((field, wire)) = reader.key()? {
            match (field, wire) {
                (1, LENGTH) => model.pieces.push(parse_piece(reader.bytes()?)?),
                (2, LENGTH) => {
                    let mut spec = Reader::new(reader.bytes()?);
                    while let Some((field, wire)) = spec.key()? {
                        match (field, wire) {
                            (3, VARINT) => model.model_type = spec.varint()?,
                            (35, VARINT) => model.byte_fallback = spec.varint()? != 0,
                            (40, VARINT) => model.unk_id = spec.varint()? as usize,
                            _ => spec.skip(wire)?,
                        }
                    }
                }
                (3, LENGTH) => {
                    has_normalizer_spec = true;
                    let mut spec = Reader::new(reader.bytes()?);
                    while let Some((field, wire)) = spec.key()? {
                        match (field, wire) {
                            (2, LENGTH) => model.precompiled_charsmap = spec.bytes()?.to_vec(),
                            (4, VARINT) => model.remove_extra_whitespaces = spec.varint()? != 0,
                            (5, VARINT) => model.escape_whitespaces = spec.varint()? != 0,
                            _ => spec.skip(wire)?,
                        }
                    }
                }
                _ => reader.skip(wire)?,
            }
        }
        if model.pieces.is_empty() {
            bail!("no pieces");
        }
        // Every model sentencepiece writes has one; without it (a file cut short after the
        // pieces, say) the normalization would silently fall back to defaults.
        if !has_normalizer_spec {
            bail!("no normalizer_spec (a truncated model?)");
        }
        if model.unk_id >= model.pieces.len() {
            bail!("unk_id {} of {} pieces", model.unk_id, model.pieces.len());
        }
        if model.pieces[model.unk_id].kind != PieceKind::Unknown {
            bail!(
                "unk_id {} is the piece {:?}, not an unknown piece",
                model.unk_id,
                model.pieces[model.unk_id].piece
            );
        }
        for (id, piece) in model.pieces.iter().enumerate() {
            if !piece.score.is_finite() {
                bail!(
                    "piece {id} ({:?}) has the score {}",
                    piece.piece,
                    piece.score
                );
            }
            // The unigram model's trie holds a piece as a chain of one node per byte, built
            // and dropped recursively: a piece of 200 KB overflows the stack.
            if piece.piece.len() > MAX_PIECE_BYTES {
                bail!(
                    "piece {id} is {} bytes long (at most {MAX_PIECE_BYTES}; sentencepiece's \
                     trainer makes pieces of at most 16 characters)",
                    piece.piece.len()
                );
            }
        }
        Ok(model)
    }

    /// The id of `piece`.
    pub fn id(&self, piece: &str) -> Option<u32> {
        self.pieces
            .iter()
            .position(|p| p.piece == piece)
            .map(|i| i as u32)
    }
}

fn parse_piece(bytes: &[u8]) -> Result<Piece> {
    let mut piece = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceKind::Normal,
    };
    let mut reader = Reader::new(bytes);
    while let Some((field, wire)) = reader.key()? {
        match (field, wire) {
            (1, LENGTH) => {
                piece.piece =
                    String::from_utf8(reader.bytes()?.to_vec()).context("a piece is not UTF-8")?
            }
            (2, FIXED32) => piece.score = f32::from_le_bytes(reader.fixed32()?),
            (3, VARINT) => {
                piece.kind = match reader.varint()? {
                    1 => PieceKind::Normal,
                    2 => PieceKind::Unknown,
                    3 => PieceKind::Control,
                    4 => PieceKind::UserDefined,
                    5 => PieceKind::Unused,
                    6 => PieceKind::Byte,
                    other => bail!("piece type {other}"),
                }
            }
            _ => reader.skip(wire)?,
        }
    }
    Ok(piece)
}

/// The longest piece accepted, in bytes.
const MAX_PIECE_BYTES: usize = 1024;

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LENGTH: u64 = 2;
const FIXED32: u64 = 5;

/// A protobuf wire-format reader over one message.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    /// The next field number and wire type, `None` at the end.
    fn key(&mut self) -> Result<Option<(u64, u64)>> {
        if self.position == self.bytes.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        Ok(Some((key >> 3, key & 7)))
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.position).context("truncated varint")?;
            self.position += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("varint longer than 10 bytes")
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        let end = self
            .position
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .context("truncated field")?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = usize::try_from(self.varint()?).context("field length")?;
        self.take(len)
    }

    fn fixed32(&mut self) -> Result<[u8; 4]> {
        Ok(self.take(4)?.try_into().expect("four bytes taken"))
    }

    fn skip(&mut self, wire: u64) -> Result<()> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LENGTH => self.bytes().map(drop),
            FIXED32 => self.take(4).map(drop),
            other => bail!("unsupported wire type {other}"),
        }
    }
}

/// SigLIP's end-of-text, padding and unknown tokens, as `SiglipTokenizer` names them.
pub const SIGLIP_EOS: &str = "</s>";
const SIGLIP_UNK: &str = "<unk>";

/// Python's `string.punctuation`, which `SiglipTokenizer.canonicalize_text` removes.
const ASCII_PUNCTUATION: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]"##;

/// The tokenizer transformers' `SiglipTokenizer` is on `spiece.model` (transformers 5,
/// `models/siglip/tokenization_siglip.py`): a `▁` in front of the text; its canonical form
/// (lower case, ASCII punctuation removed, whitespace runs to one space, stripped); the
/// model's own normalization (its precompiled character map, extra spaces removed, spaces as
/// `▁`); the unigram model over the whole text; `</s>` after it.
pub fn siglip_tokenizer(path: &Path) -> Result<Tokenizer> {
    siglip_tokenizer_of(SentencePieceModel::read(path)?, path)
}

/// [`siglip_tokenizer`] of a model already read from `path` (named in messages).
pub fn siglip_tokenizer_of(model: SentencePieceModel, path: &Path) -> Result<Tokenizer> {
    let in_file = || format!("{}", path.display());
    if model.model_type != 1 {
        bail!(
            "{}: a sentencepiece model of type {} (only unigram models, type 1, are supported)",
            path.display(),
            model.model_type
        );
    }
    let eos = model
        .id(SIGLIP_EOS)
        .with_context(|| format!("{}: no piece {SIGLIP_EOS}", path.display()))?;
    let vocab = model
        .pieces
        .iter()
        .map(|p| (p.piece.clone(), f64::from(p.score)))
        .collect();
    let unigram = Unigram::from(vocab, Some(model.unk_id), model.byte_fallback)
        .map_err(|e| anyhow::anyhow!("{}: cannot build the unigram model: {e}", in_file()))?;
    let replace = |pattern: &str, content: &str, regex: bool| -> Result<NormalizerWrapper> {
        let pattern = match regex {
            true => tokenizers::normalizers::replace::ReplacePattern::Regex(pattern.into()),
            false => pattern.into(),
        };
        Replace::new(pattern, content)
            .map(NormalizerWrapper::from)
            .map_err(|e| anyhow::anyhow!("normalizer pattern {content:?}: {e}"))
    };
    let mut normalizers = vec![
        replace("▁", " ", false)?,
        Prepend::new("▁".into()).into(),
        Lowercase.into(),
        replace(ASCII_PUNCTUATION, "", true)?,
        // Python's `\s` also matches the information separators U+001C..U+001F.
        replace(r"[\s\x1c-\x1f]+", " ", true)?,
        Strip::new(true, true).into(),
    ];
    if !model.precompiled_charsmap.is_empty() {
        check_charsmap(&model.precompiled_charsmap)
            .with_context(|| format!("{}: invalid precompiled_charsmap", in_file()))?;
        let charsmap = Precompiled::from(&model.precompiled_charsmap)
            .map_err(|e| anyhow::anyhow!("{}: invalid precompiled_charsmap: {e}", in_file()))?;
        normalizers.push(charsmap.into());
    }
    if model.remove_extra_whitespaces {
        normalizers.push(replace(" {2,}", " ", true)?);
        normalizers.push(Strip::new(false, true).into());
    }
    if model.escape_whitespaces {
        normalizers.push(replace(" ", "▁", false)?);
    }
    let post_processor = TemplateProcessing::builder()
        .try_single(format!("$A {SIGLIP_EOS}"))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .special_tokens(vec![(SIGLIP_EOS, eos)])
        .build()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut tokenizer = Tokenizer::new(unigram);
    tokenizer
        .with_normalizer(Some(Sequence::new(normalizers)))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tokenizer.with_post_processor(Some(post_processor));
    let special = [SIGLIP_EOS, SIGLIP_UNK].map(|content| {
        AddedToken::from(content, true)
            .lstrip(true)
            .rstrip(true)
            .normalized(false)
    });
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(tokenizer)
}

/// Checks a precompiled character map as `spm_precompiled` reads it, which indexes without
/// checking and so panics on a malformed map at the first text: a little-endian u32 trie
/// size in bytes, the trie (sentencepiece's Darts double array of u32 units), then the
/// replacement strings, UTF-8, each ended by a NUL. Every node reachable from the root must
/// have all 255 of its byte transitions inside the array (Darts lays nodes out in blocks of
/// 256), and every leaf's value must start a replacement inside the strings, on a
/// character boundary.
fn check_charsmap(bytes: &[u8]) -> Result<()> {
    let Some((size, rest)) = bytes.split_first_chunk::<4>() else {
        bail!("{} bytes, shorter than its trie size", bytes.len());
    };
    let trie_bytes = u32::from_le_bytes(*size) as usize;
    if !trie_bytes.is_multiple_of(4) || trie_bytes > rest.len() || trie_bytes == 0 {
        bail!(
            "a trie of {trie_bytes} bytes in {} (a non-empty whole number of 4-byte units)",
            rest.len()
        );
    }
    let units: Vec<usize> = rest[..trie_bytes]
        .chunks_exact(4)
        .map(|unit| u32::from_le_bytes(unit.try_into().expect("4 bytes")) as usize)
        .collect();
    let replacements = std::str::from_utf8(&rest[trie_bytes..])
        .context("its replacement strings are not UTF-8")?;
    let offset = |unit: usize| (unit >> 10) << ((unit & (1 << 9)) >> 6);
    let label = |unit: usize| unit & ((1 << 31) | 0xFF);
    let has_leaf = |unit: usize| (unit >> 8) & 1 == 1;
    let value = |unit: usize| unit & ((1 << 31) - 1);
    let mut pending = vec![offset(units[0])];
    let mut seen = std::collections::HashSet::new();
    while let Some(node) = pending.pop() {
        if !seen.insert(node) {
            continue;
        }
        if (node | 0xFF) >= units.len() {
            bail!("its trie reaches unit {node} of {}", units.len());
        }
        for byte in 1..=0xFF {
            let unit = units[node ^ byte];
            if label(unit) != byte {
                continue;
            }
            let next = node ^ byte ^ offset(unit);
            if has_leaf(unit) {
                let Some(&leaf) = units.get(next) else {
                    bail!("a leaf at unit {next} of {}", units.len());
                };
                let start = value(leaf);
                if !replacements.is_char_boundary(start) {
                    bail!(
                        "a replacement at byte {start} of {} bytes of strings",
                        replacements.len()
                    );
                }
            }
            pending.push(next);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `ModelProto` of `pieces` (text, score, type) and a trainer spec of `model_type`.
    fn proto(pieces: &[(&str, f32, u8)], model_type: u8) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (text, score, kind) in pieces {
            let mut piece = vec![0x0a, text.len() as u8];
            piece.extend(text.as_bytes());
            piece.push(0x15);
            piece.extend(score.to_le_bytes());
            piece.extend([0x18, *kind]);
            bytes.extend([0x0a, piece.len() as u8]);
            bytes.extend(piece);
        }
        bytes.extend([0x12, 2, 0x18, model_type]);
        bytes.extend([0x1a, 0]);
        bytes
    }

    #[test]
    fn pieces_and_specs_are_read() {
        let model =
            SentencePieceModel::parse(&proto(&[("<unk>", 0.0, 2), ("▁a", -1.5, 1)], 1)).unwrap();
        assert_eq!(model.pieces.len(), 2);
        assert_eq!(model.pieces[1].piece, "▁a");
        assert_eq!(model.pieces[1].score, -1.5);
        assert_eq!(model.pieces[0].kind, PieceKind::Unknown);
        assert_eq!(model.model_type, 1);
        assert!(model.remove_extra_whitespaces && model.escape_whitespaces);
    }

    #[test]
    fn truncated_and_empty_models_are_refused() {
        let bytes = proto(&[("<unk>", 0.0, 2)], 1);
        let err = SentencePieceModel::parse(&bytes[..bytes.len() - 3]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(SentencePieceModel::parse(&[]).is_err());
    }

    #[test]
    fn models_that_would_silently_mislead_are_refused() {
        let refused = |bytes: &[u8], expected: &str| {
            let err = SentencePieceModel::parse(bytes).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        };
        refused(
            &proto(&[("<unk>", 0.0, 2), ("▁a", f32::NAN, 1)], 1),
            "score NaN",
        );
        refused(
            &proto(&[("<unk>", 0.0, 2), ("▁a", f32::INFINITY, 1)], 1),
            "score inf",
        );
        refused(
            &proto(&[("<pad>", 0.0, 3), ("▁a", -1.0, 1)], 1),
            "not an unknown piece",
        );
        let whole = proto(&[("<unk>", 0.0, 2), ("▁a", -1.0, 1)], 1);
        refused(&whole[..whole.len() - 2], "no normalizer_spec");
        // A piece longer than the protobuf helper's one-byte lengths, spelled out.
        let long = "a".repeat(MAX_PIECE_BYTES + 1);
        let mut piece = vec![0x0a];
        piece.extend([0x81, 0x08]); // 1025 as a varint
        piece.extend(long.as_bytes());
        let mut bytes = proto(&[("<unk>", 0.0, 2)], 1);
        bytes.push(0x0a);
        bytes.extend([0x84, 0x08]); // the piece message's length, 1028
        bytes.extend(piece);
        refused(&bytes, "1025 bytes long");
    }

    #[test]
    fn malformed_character_maps_are_refused_before_they_are_used() {
        let map = |trie: &[u32], strings: &[u8]| -> Vec<u8> {
            let mut bytes = ((trie.len() * 4) as u32).to_le_bytes().to_vec();
            bytes.extend(trie.iter().flat_map(|u| u.to_le_bytes()));
            bytes.extend(strings);
            bytes
        };
        assert!(check_charsmap(&[0, 0, 0, 0]).is_err(), "an empty trie");
        assert!(check_charsmap(&[1, 2]).is_err(), "no trie size");
        assert!(
            check_charsmap(&map(&[0; 3], b"")).is_err(),
            "a trie smaller than a block"
        );
        // A root whose only child, byte 'a' (node 0 ^ 'a'), leads to a leaf whose value
        // points at byte 1 of "é\0": inside a character.
        let mut trie = vec![0u32; 512];
        let child = 0x61usize; // the root's offset 0, so the child is at 0 ^ 'a'
        trie[child] = 0x61 | (1 << 8) | (256 << 10); // label 'a', a leaf, offset 256
        trie[child ^ 256] = 1; // the leaf's value: byte 1
        assert!(check_charsmap(&map(&trie, "é\0".as_bytes())).is_err());
        trie[child ^ 256] = 0;
        check_charsmap(&map(&trie, "é\0".as_bytes())).unwrap();
    }

    #[test]
    fn bpe_models_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spiece.model");
        std::fs::write(&path, proto(&[("<unk>", 0.0, 2), ("</s>", 0.0, 3)], 2)).unwrap();
        let err = siglip_tokenizer(&path).unwrap_err().to_string();
        assert!(
            err.contains("spiece.model") && err.contains("unigram"),
            "{err}"
        );
    }
}
