//! A tokenizer.json in SentencePiece's style (BPE with byte fallback and `▁` for spaces: what
//! transformers writes for a Mistral or Llama 2 `tokenizer.model`) as llama.cpp's `llama`
//! vocabulary, for folders that ship no tokenizer.model.
//!
//! llama.cpp's SentencePiece tokenizer merges, at each step, the adjacent pair whose joined
//! text is the vocabulary piece with the highest score. BPE applies the lowest-ranked merge
//! first. So each piece's score is minus the rank of the first merge that makes it, and the
//! two orders agree (llama.cpp's own converter writes -1000 for every score, which leaves
//! the order to chance). Pieces no merge makes score below every merge; single characters,
//! bytes and special tokens, which are never merged into, score 0.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use bora_model::gguf::Value;
use serde_json::Value as Json;

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// Writes the vocabulary of `path` (a tokenizer.json; its tokenizer_config.json beside it, if
/// any, gives BOS/EOS/UNK and `add_bos_token`) into `md`.
pub fn spm_style_vocab(
    path: &Path,
    vocab_size: usize,
    md: &mut BTreeMap<String, Value>,
) -> Result<()> {
    let json = read(path)?;
    let model = &json["model"];
    if model["type"] != "BPE" || model["byte_fallback"] != true {
        bail!(
            "{}: only a SentencePiece-style tokenizer.json (BPE with byte_fallback) can be written as GGUF; a byte-level one needs llama.cpp's pre-tokenizer name, which its converter finds by hashing tokenizer output",
            path.display()
        );
    }
    let mut pieces: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![NORMAL; vocab_size];
    let mut place = |piece: &str, id: &Json, ty: i32| -> Result<()> {
        let id = id
            .as_u64()
            .filter(|&i| (i as usize) < vocab_size)
            .with_context(|| {
                format!(
                    "{}: {piece:?} has id {id}, outside the model's vocabulary of {vocab_size}",
                    path.display()
                )
            })? as usize;
        pieces[id] = Some(piece.to_string());
        types[id] = ty;
        Ok(())
    };
    let vocab = model["vocab"]
        .as_object()
        .with_context(|| format!("{}: model.vocab is not an object", path.display()))?;
    for (piece, id) in vocab {
        let byte = piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>');
        place(piece, id, if byte { BYTE } else { NORMAL })?;
    }
    let unk = model["unk_token"].as_str();
    for t in json["added_tokens"].as_array().into_iter().flatten() {
        let content = t["content"].as_str().unwrap_or_default();
        let ty = match (t["special"] == true, Some(content) == unk) {
            (_, true) => UNKNOWN,
            (true, false) => CONTROL,
            (false, false) => USER_DEFINED,
        };
        place(content, &t["id"], ty)?;
    }
    let pieces: Vec<String> = pieces
        .into_iter()
        .enumerate()
        .map(|(id, p)| {
            p.with_context(|| {
                format!(
                    "{}: no token has id {id}, but the model has a vocabulary of {vocab_size}",
                    path.display()
                )
            })
        })
        .collect::<Result<_>>()?;
    let scores = merge_scores(path, &pieces, &types, &model["merges"])?;

    let config = read(&path.with_file_name("tokenizer_config.json")).ok();
    let id_of = |key: &str, default: &str| -> Option<u32> {
        let named = config.as_ref().and_then(|c| match &c[key] {
            Json::String(s) => Some(s.clone()),
            Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
            _ => None,
        });
        let name = named.unwrap_or_else(|| default.to_string());
        pieces.iter().position(|p| *p == name).map(|i| i as u32)
    };
    let add_bos = config
        .as_ref()
        .and_then(|c| c["add_bos_token"].as_bool())
        .unwrap_or(true);
    let (bos, eos, unk) = (
        id_of("bos_token", "<s>"),
        id_of("eos_token", "</s>"),
        id_of("unk_token", "<unk>"),
    );
    super::hf_to_gguf::LlamaVocab {
        pieces,
        scores,
        types,
        bos,
        eos,
        unk,
        add_bos,
        add_space_prefix: prepends_space(&json),
    }
    .write(md);
    Ok(())
}

fn read(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// Each piece's score from the first (lowest-ranked) merge that makes it; see the module doc.
fn merge_scores(path: &Path, pieces: &[String], types: &[i32], merges: &Json) -> Result<Vec<f32>> {
    let merges = merges
        .as_array()
        .with_context(|| format!("{}: model.merges is not a list", path.display()))?;
    let id: HashMap<&str, usize> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    let mut scores: Vec<Option<f32>> = vec![None; pieces.len()];
    for (rank, m) in merges.iter().enumerate() {
        // Older files write a merge as "left right", newer ones as ["left", "right"].
        let joined = match m {
            Json::String(s) => s.split_once(' ').map(|(a, b)| format!("{a}{b}")),
            Json::Array(ab) => match (
                ab.first().and_then(Json::as_str),
                ab.get(1).and_then(Json::as_str),
            ) {
                (Some(a), Some(b)) => Some(format!("{a}{b}")),
                _ => None,
            },
            _ => None,
        }
        .with_context(|| format!("{}: merge {rank} is not a pair: {m}", path.display()))?;
        if let Some(&i) = id.get(joined.as_str()) {
            scores[i].get_or_insert(-(rank as f32));
        }
    }
    let unmade = -(merges.len() as f32) - 1.0;
    Ok(scores
        .into_iter()
        .zip(pieces.iter().zip(types))
        .map(|(s, (p, &ty))| match s {
            Some(s) => s,
            None if ty != NORMAL || p.chars().count() <= 1 => 0.0,
            None => unmade,
        })
        .collect())
}

/// Whether the tokenizer puts `▁` before the text: a `Prepend` normalizer, or a `Metaspace`
/// pre-tokenizer that adds a prefix space.
fn prepends_space(json: &Json) -> bool {
    fn any(v: &Json, pred: &dyn Fn(&Json) -> bool) -> bool {
        pred(v)
            || v["normalizers"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| any(x, pred)))
            || v["pretokenizers"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| any(x, pred)))
    }
    let prepend = |v: &Json| v["type"] == "Prepend" && v["prepend"] == "▁";
    let metaspace = |v: &Json| {
        v["type"] == "Metaspace"
            && (v["prepend_scheme"].as_str().is_some_and(|s| s != "never")
                || v["add_prefix_space"] == true)
    };
    any(&json["normalizer"], &prepend) || any(&json["pre_tokenizer"], &metaspace)
}
