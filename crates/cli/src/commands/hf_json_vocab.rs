//! A tokenizer.json as a GGUF vocabulary, for folders that ship no tokenizer.model or
//! tekken.json. In SentencePiece's style (BPE with byte fallback and `▁` for spaces: what
//! transformers writes for a Mistral or Llama 2 `tokenizer.model`) it becomes llama.cpp's
//! `llama` vocabulary; byte-level (GPT-2's byte alphabet: Tekken, Llama 3, SmolLM) it becomes
//! `gpt2`, with the pre-tokenizer named as llama.cpp knows it.
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
/// any, gives BOS/EOS/UNK and `add_bos_token`) into `md`. The SentencePiece-style scores are
/// described below.
pub fn tokenizer_json_vocab(
    path: &Path,
    vocab_size: usize,
    md: &mut BTreeMap<String, Value>,
) -> Result<()> {
    let json = read(path)?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        bail!(
            "{}: model.type is {}; only BPE tokenizer.json files can be written as GGUF",
            path.display(),
            model["type"]
        );
    }
    if model["byte_fallback"] != true {
        return byte_level_vocab(path, &json, vocab_size, md);
    }
    let (pieces, types) = pieces_and_types(path, &json, vocab_size, true)?;
    let scores = merge_scores(path, &pieces, &types, &model["merges"])?;

    let config = read(&path.with_file_name("tokenizer_config.json")).ok();
    let id_of = |key: &str, default: &str| special_id(config.as_ref(), &pieces, key, default);
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

/// Every token of the tokenizer.json (`model.vocab`, then `added_tokens`) by id, with its
/// llama.cpp token type; SentencePiece-style files (`byte_tokens`) mark `<0xNN>` as bytes.
fn pieces_and_types(
    path: &Path,
    json: &Json,
    vocab_size: usize,
    byte_tokens: bool,
) -> Result<(Vec<String>, Vec<i32>)> {
    let model = &json["model"];
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
        let byte =
            byte_tokens && piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>');
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
    Ok((pieces, types))
}

/// The id of the special token `key` names in tokenizer_config.json (a string, or an object
/// with `content`), else of the piece `default`.
fn special_id(config: Option<&Json>, pieces: &[String], key: &str, default: &str) -> Option<u32> {
    let named = config.and_then(|c| match &c[key] {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    });
    let name = named.unwrap_or_else(|| default.to_string());
    pieces.iter().position(|p| *p == name).map(|i| i as u32)
}

/// A byte-level BPE tokenizer.json (GPT-2's byte alphabet, no byte fallback: what
/// transformers writes for Tekken, Llama 3 or SmolLM) as llama.cpp's `gpt2` vocabulary: the
/// tokens and merges as they are, and `tokenizer.ggml.pre` named from the pre-tokenizer, for
/// the splits llama.cpp knows by name.
fn byte_level_vocab(
    path: &Path,
    json: &Json,
    vocab_size: usize,
    md: &mut BTreeMap<String, Value>,
) -> Result<()> {
    let pre = byte_level_pre_name(&json["pre_tokenizer"]).with_context(|| {
        format!(
            "{}: a byte-level tokenizer.json with a pre-tokenizer llama.cpp has no name for \
             (known: ByteLevel alone = gpt2; Digits + ByteLevel = smollm; the Llama 3 or Tekken \
             split regex + ByteLevel = llama-bpe, tekken): {}",
            path.display(),
            json["pre_tokenizer"]
        )
    })?;
    let (pieces, types) = pieces_and_types(path, json, vocab_size, false)?;
    let merges = json["model"]["merges"]
        .as_array()
        .with_context(|| format!("{}: model.merges is not a list", path.display()))?
        .iter()
        .enumerate()
        .map(|(rank, m)| {
            merge_pair(m)
                .map(|(a, b)| Value::Str(format!("{a} {b}")))
                .with_context(|| format!("{}: merge {rank} is not a pair: {m}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let config = read(&path.with_file_name("tokenizer_config.json")).ok();
    let id_of = |key: &str| special_id(config.as_ref(), &pieces, key, "");
    let (bos, eos, unk, pad) = (
        id_of("bos_token"),
        id_of("eos_token"),
        id_of("unk_token"),
        id_of("pad_token"),
    );
    // tokenizer_config.json's flag, else whether the post-processor puts BOS first.
    let add_bos = config
        .as_ref()
        .and_then(|c| c["add_bos_token"].as_bool())
        .unwrap_or_else(|| {
            let first = &json["post_processor"]["single"][0]["SpecialToken"]["id"];
            bos.is_some_and(|b| first.as_str() == Some(pieces[b as usize].as_str()))
        });
    let mut put = |k: &str, v: Value| {
        md.insert(k.to_string(), v);
    };
    put("tokenizer.ggml.model", Value::Str("gpt2".into()));
    put("tokenizer.ggml.pre", Value::Str(pre.into()));
    put(
        "tokenizer.ggml.tokens",
        Value::Array(pieces.into_iter().map(Value::Str).collect()),
    );
    put(
        "tokenizer.ggml.token_type",
        Value::Array(types.into_iter().map(Value::I32).collect()),
    );
    put("tokenizer.ggml.merges", Value::Array(merges));
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", bos),
        ("tokenizer.ggml.eos_token_id", eos),
        ("tokenizer.ggml.unknown_token_id", unk),
        ("tokenizer.ggml.padding_token_id", pad),
    ] {
        if let Some(id) = id {
            put(key, Value::U32(id));
        }
    }
    put("tokenizer.ggml.add_bos_token", Value::Bool(add_bos));
    put("tokenizer.ggml.add_eos_token", Value::Bool(false));
    Ok(())
}

/// llama.cpp's name for a byte-level tokenizer.json's pre-tokenizer, where it has one.
fn byte_level_pre_name(pre: &Json) -> Option<&'static str> {
    let byte_level = |v: &Json, splits: bool| {
        v["type"] == "ByteLevel" && v["use_regex"].as_bool().unwrap_or(true) == splits
    };
    if byte_level(pre, true) {
        return Some("gpt2");
    }
    let steps = pre["pretokenizers"]
        .as_array()
        .filter(|_| pre["type"] == "Sequence")?;
    match steps.as_slice() {
        [digits, last] if digits["type"] == "Digits" && digits["individual_digits"] == true => {
            byte_level(last, true).then_some("smollm")
        }
        [split, last] if split["type"] == "Split" && byte_level(last, false) => {
            let isolated = split["behavior"] == "Isolated" && split["invert"] != true;
            let regex = split["pattern"]["Regex"].as_str()?;
            isolated
                .then(|| bora_engine::tokenizer::pre_tokenizer_named_by_regex(regex))
                .flatten()
        }
        _ => None,
    }
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
        let joined = merge_pair(m)
            .map(|(a, b)| format!("{a}{b}"))
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

/// A merge's two tokens: older files write a merge as "left right", newer ones as
/// ["left", "right"].
fn merge_pair(m: &Json) -> Option<(&str, &str)> {
    match m {
        Json::String(s) => s.split_once(' '),
        Json::Array(ab) => Some((ab.first()?.as_str()?, ab.get(1)?.as_str()?)),
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(steps: Json) -> Json {
        serde_json::json!({"type": "Sequence", "pretokenizers": steps})
    }

    /// The pre-tokenizers transformers writes for each byte-level family, and what llama.cpp
    /// names them; any other split has no name, so the conversion is refused.
    #[test]
    fn byte_level_pre_tokenizers_get_llama_cpps_names() {
        let byte_level = |use_regex: bool| serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": use_regex});
        let split = |regex: &str| {
            serde_json::json!({"type": "Split", "pattern": {"Regex": regex},
                               "behavior": "Isolated", "invert": false})
        };
        let tekken = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        let llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        let digits = serde_json::json!({"type": "Digits", "individual_digits": true});
        for (pre, want) in [
            (byte_level(true), Some("gpt2")),
            (
                sequence(serde_json::json!([digits, byte_level(true)])),
                Some("smollm"),
            ),
            (
                sequence(serde_json::json!([split(tekken), byte_level(false)])),
                Some("tekken"),
            ),
            (
                sequence(serde_json::json!([split(llama3), byte_level(false)])),
                Some("llama-bpe"),
            ),
            (
                sequence(serde_json::json!([split(r"\p{N}+"), byte_level(false)])),
                None,
            ),
            (
                sequence(serde_json::json!([split(tekken), byte_level(true)])),
                None,
            ),
            (byte_level(false), None),
            (serde_json::json!({"type": "Metaspace"}), None),
        ] {
            assert_eq!(byte_level_pre_name(&pre), want, "{pre}");
        }
    }
}
