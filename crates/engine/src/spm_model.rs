//! SentencePiece's own model files (`tokenizer.model`, Mistral's `tokenizer.model.v1/.v3/.v7`),
//! read straight from their protobuf encoding (`ModelProto`): the pieces with scores and
//! types, the trainer's special ids, the normalizer's settings. Only what bora encodes exactly
//! is accepted: BPE models with the identity normalizer (every Mistral tokenizer is one).

use std::path::Path;

use crate::error::{EngineError, Result};
use crate::spm::SpmVocab;

/// What a model file holds that the tokenizer needs.
pub struct SpmModel {
    pub vocab: SpmVocab,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    /// The pieces as the file lists them, with their scores and types (for writing GGUF).
    pub pieces: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
    pub add_dummy_prefix: bool,
}

/// A cursor over protobuf wire data; every read is bounds-checked.
struct Wire<'a> {
    buf: &'a [u8],
    at: usize,
}

enum Field<'a> {
    Varint(u64),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
    Other,
}

impl<'a> Wire<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, at: 0 }
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.at).ok_or("ends inside a number")?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a number longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| format!("a field of {n} bytes runs past the end"))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// The next (field number, value), or None at the end.
    fn next(&mut self) -> std::result::Result<Option<(u64, Field<'a>)>, String> {
        if self.at >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Other
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "a huge length")?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32([b[0], b[1], b[2], b[3]])
            }
            t => return Err(format!("unknown wire type {t}")),
        };
        Ok(Some((key >> 3, field)))
    }
}

impl SpmModel {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| EngineError::Tokenizer {
            path: path.to_path_buf(),
            msg: format!("cannot read: {e}"),
        })?;
        Self::parse(&bytes).map_err(|msg| EngineError::Tokenizer {
            path: path.to_path_buf(),
            msg: format!("not a usable SentencePiece model: {msg}"),
        })
    }

    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let (mut pieces, mut scores, mut types) = (Vec::new(), Vec::new(), Vec::new());
        let (mut model_type, mut unk, mut bos, mut eos) = (1u64, 0i64, 1i64, 2i64);
        let (mut normalizer, mut charsmap, mut dummy_prefix, mut squash_spaces) =
            (String::new(), 0usize, true, true);
        let mut w = Wire::new(bytes);
        while let Some((field, value)) = w.next()? {
            match (field, value) {
                (1, Field::Bytes(b)) => {
                    let (mut piece, mut score, mut kind) = (None, 0f32, 1i32);
                    let mut p = Wire::new(b);
                    while let Some((f, v)) = p.next()? {
                        match (f, v) {
                            (1, Field::Bytes(s)) => {
                                piece =
                                    Some(String::from_utf8(s.to_vec()).map_err(|_| {
                                        format!("piece {} is not UTF-8", pieces.len())
                                    })?)
                            }
                            (2, Field::Fixed32(x)) => score = f32::from_le_bytes(x),
                            (3, Field::Varint(t)) => kind = t as i32,
                            _ => {}
                        }
                    }
                    pieces
                        .push(piece.ok_or_else(|| format!("piece {} has no text", pieces.len()))?);
                    scores.push(score);
                    types.push(kind);
                }
                (2, Field::Bytes(b)) => {
                    let mut t = Wire::new(b);
                    while let Some((f, v)) = t.next()? {
                        if let Field::Varint(x) = v {
                            // ids are int32: negative ones arrive sign-extended to 64 bits
                            match f {
                                3 => model_type = x,
                                40 => unk = x as i64,
                                41 => bos = x as i64,
                                42 => eos = x as i64,
                                _ => {}
                            }
                        }
                    }
                }
                (3, Field::Bytes(b)) => {
                    let mut n = Wire::new(b);
                    while let Some((f, v)) = n.next()? {
                        match (f, v) {
                            (1, Field::Bytes(s)) => normalizer = String::from_utf8_lossy(s).into(),
                            (2, Field::Bytes(s)) => charsmap = s.len(),
                            (3, Field::Varint(x)) => dummy_prefix = x != 0,
                            (4, Field::Varint(x)) => squash_spaces = x != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if pieces.is_empty() {
            return Err("no pieces".into());
        }
        if model_type != 2 {
            return Err(format!(
                "model type {model_type} (only BPE, type 2, is supported; 1 is unigram)"
            ));
        }
        if charsmap > 0 || squash_spaces || !(normalizer.is_empty() || normalizer == "identity") {
            return Err(format!(
                "normalizer '{normalizer}' (only the identity normalizer without whitespace squashing is supported)"
            ));
        }
        let id = |i: i64| {
            u32::try_from(i)
                .ok()
                .filter(|&i| (i as usize) < pieces.len())
        };
        let vocab = SpmVocab::new(
            pieces.clone(),
            scores.clone(),
            types.clone(),
            id(unk),
            dummy_prefix,
        );
        Ok(Self {
            vocab,
            bos: id(bos),
            eos: id(eos),
            unk: id(unk),
            pieces,
            scores,
            types,
            add_dummy_prefix: dummy_prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_garbage_models_are_errors_not_panics() {
        for bytes in [
            &b""[..],
            b"\x0a\xff\xff\xff\xff\x0f",
            b"\x0a\x05ab",
            b"\xff",
        ] {
            assert!(SpmModel::parse(bytes).is_err());
        }
    }
}
