//! Tekken, Mistral's tiktoken-style tokenizer (`tekken.json`, from Mistral NeMo on): text is
//! split by a regular expression, each piece's bytes merged by rank (lowest first), and
//! ids offset past a block of special tokens (`<unk>`, `<s>`, `</s>`, `[INST]`, …) that plain
//! text never produces.

use std::collections::HashMap;
use std::path::Path;

use fancy_regex::Regex;

use crate::error::{EngineError, Result};

/// The special tokens of files that do not list their own, in id order (mistral-common's).
const DEFAULT_SPECIALS: [&str; 20] = [
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
];

pub struct Tekken {
    pattern: Regex,
    ranks: HashMap<Vec<u8>, u32>,
    /// Bytes of each rank.
    pieces: Vec<Vec<u8>>,
    specials: Vec<String>,
    /// The format version the file declares ("v3", "v7", …).
    pub version: String,
}

impl Tekken {
    pub fn open(path: &Path) -> Result<Self> {
        let err = |msg: String| EngineError::Tokenizer {
            path: path.to_path_buf(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
        Self::from_json(&json).map_err(err)
    }

    pub fn from_json(json: &serde_json::Value) -> std::result::Result<Self, String> {
        let cfg = json
            .get("config")
            .ok_or("no \"config\" object (not a tekken.json)")?;
        let num = |k: &str| {
            cfg.get(k)
                .and_then(serde_json::Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| format!("config.{k} is missing"))
        };
        let pattern = cfg
            .get("pattern")
            .and_then(serde_json::Value::as_str)
            .ok_or("config.pattern is missing")?;
        let pattern = Regex::new(pattern).map_err(|e| format!("config.pattern: {e}"))?;
        let (vocab_size, n_special) = (
            num("default_vocab_size")?,
            num("default_num_special_tokens")?,
        );
        let inner = vocab_size
            .checked_sub(n_special)
            .ok_or("default_vocab_size is smaller than the special tokens")?;
        let vocab = json
            .get("vocab")
            .and_then(serde_json::Value::as_array)
            .ok_or("no \"vocab\" list")?;
        if vocab.len() < inner {
            return Err(format!(
                "the vocabulary lists {} tokens, the config asks for {inner}",
                vocab.len()
            ));
        }
        let mut pieces = Vec::with_capacity(inner);
        let mut ranks = HashMap::with_capacity(inner);
        for (i, t) in vocab[..inner].iter().enumerate() {
            if t.get("rank").and_then(serde_json::Value::as_u64) != Some(i as u64) {
                return Err(format!("vocab entry {i} does not have rank {i}"));
            }
            let b64 = t
                .get("token_bytes")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| format!("vocab entry {i} has no token_bytes"))?;
            let bytes = base64_decode(b64).ok_or_else(|| format!("vocab entry {i}: bad base64"))?;
            ranks.insert(bytes.clone(), i as u32);
            pieces.push(bytes);
        }
        let mut specials: Vec<String> = match json.get("special_tokens").and_then(|s| s.as_array())
        {
            Some(list) => list
                .iter()
                .map(|t| {
                    t.get("token_str")
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_string)
                        .ok_or("a special token without token_str".to_string())
                })
                .collect::<std::result::Result<_, _>>()?,
            None => DEFAULT_SPECIALS.iter().map(|s| s.to_string()).collect(),
        };
        if specials.len() > n_special {
            return Err(format!(
                "{} special tokens listed, the config reserves {n_special}",
                specials.len()
            ));
        }
        for i in specials.len()..n_special {
            specials.push(format!("<SPECIAL_{i}>"));
        }
        let version = cfg
            .get("version")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("v3")
            .to_string();
        Ok(Self {
            pattern,
            ranks,
            pieces,
            specials,
            version,
        })
    }

    pub fn n_special(&self) -> usize {
        self.specials.len()
    }

    pub fn vocab_size(&self) -> usize {
        self.specials.len() + self.pieces.len()
    }

    /// The id of a special token by its text (`[INST]`).
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.specials
            .iter()
            .position(|s| s == text)
            .map(|i| i as u32)
    }

    /// Text → ids; text spelling a special token stays text.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let offset = self.specials.len() as u32;
        let mut ids = Vec::new();
        for m in self.pattern.find_iter(text) {
            // A match error (backtracking limit) leaves that stretch to the byte fallback below.
            let Ok(m) = m else { continue };
            let piece = m.as_str().as_bytes();
            match self.ranks.get(piece) {
                Some(&r) => ids.push(r + offset),
                None => ids.extend(self.merge(piece).into_iter().map(|r| r + offset)),
            }
        }
        ids
    }

    /// Like [`encode`](Self::encode), but special-token text becomes that token.
    pub fn encode_parsing_special(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let (mut start, mut i) = (0, 0);
        while i < text.len() {
            let hit = self
                .specials
                .iter()
                .enumerate()
                .filter(|(_, s)| text[i..].starts_with(s.as_str()))
                .max_by_key(|(_, s)| s.len());
            match hit {
                Some((id, s)) => {
                    ids.extend(self.encode(&text[start..i]));
                    ids.push(id as u32);
                    i += s.len();
                    start = i;
                }
                None => i += text[i..].chars().next().map_or(1, char::len_utf8),
            }
        }
        ids.extend(self.encode(&text[start..]));
        ids
    }

    /// tiktoken's byte-pair merge: join the adjacent pair whose bytes have the lowest rank
    /// (leftmost on ties) until no adjacent pair is a token.
    fn merge(&self, piece: &[u8]) -> Vec<u32> {
        let mut bounds: Vec<usize> = (0..=piece.len()).collect();
        let rank = |b: &[usize], i: usize| -> Option<u32> {
            (i + 2 < b.len())
                .then(|| self.ranks.get(&piece[b[i]..b[i + 2]]).copied())
                .flatten()
        };
        loop {
            let best = (0..bounds.len().saturating_sub(2))
                .filter_map(|i| rank(&bounds, i).map(|r| (r, i)))
                .min();
            match best {
                Some((_, i)) => {
                    bounds.remove(i + 1);
                }
                None => break,
            }
        }
        bounds
            .windows(2)
            .map(|w| {
                // Every single byte is a token in a byte-level vocabulary.
                self.ranks.get(&piece[w[0]..w[1]]).copied().unwrap_or(0)
            })
            .collect()
    }

    /// The bytes of a token; special tokens give none.
    pub fn token_bytes(&self, id: u32, out: &mut Vec<u8>) {
        if let Some(p) = (id as usize)
            .checked_sub(self.specials.len())
            .and_then(|r| self.pieces.get(r))
        {
            out.extend_from_slice(p);
        }
    }

    /// The token's text as the vocabulary spells it (special tokens by name).
    pub fn piece(&self, id: u32) -> String {
        match self.specials.get(id as usize) {
            Some(s) => s.clone(),
            None => {
                let mut b = Vec::new();
                self.token_bytes(id, &mut b);
                String::from_utf8_lossy(&b).into_owned()
            }
        }
    }

    /// Ids → text, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            self.token_bytes(id, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_the_standard_alphabet() {
        assert_eq!(base64_decode("AA==").unwrap(), vec![0]);
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk/Pz4+").unwrap(), b"hi??>>");
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("a$==").is_none());
    }

    #[test]
    fn merges_lowest_rank_first_and_offsets_past_the_specials() {
        let vocab: Vec<serde_json::Value> = [&b"a"[..], b"b", b"c", b"ab", b"bc", b"abc"]
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let enc: String = match *b {
                    b"a" => "YQ==",
                    b"b" => "Yg==",
                    b"c" => "Yw==",
                    b"ab" => "YWI=",
                    b"bc" => "YmM=",
                    _ => "YWJj",
                }
                .into();
                serde_json::json!({"rank": i, "token_bytes": enc, "token_str": ""})
            })
            .collect();
        let json = serde_json::json!({
            "config": {"pattern": "[a-z]+| ", "default_vocab_size": 9, "default_num_special_tokens": 3},
            "vocab": vocab,
            "special_tokens": [{"token_str": "<unk>"}, {"token_str": "<s>"}],
        });
        let t = Tekken::from_json(&json).unwrap();
        // "abc" is one token; "cab" merges "ab" (rank 3) and keeps "c".
        assert_eq!(t.encode("abc"), vec![3 + 5]);
        assert_eq!(t.encode("cab"), vec![3 + 2, 3 + 3]);
        assert_eq!(t.decode(&[1, 3 + 2, 3 + 3]), "cab");
        assert_eq!(t.special_id("<SPECIAL_2>"), Some(2));
        assert_eq!(t.encode_parsing_special("<s>ab"), vec![1, 3 + 3]);
    }
}
