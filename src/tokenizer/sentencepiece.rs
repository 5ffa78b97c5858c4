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
        if model.unk_id >= model.pieces.len() {
            bail!("unk_id {} of {} pieces", model.unk_id, model.pieces.len());
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
    let model = SentencePieceModel::read(path)?;
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
