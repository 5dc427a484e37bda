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
            Some(list) => {
                // Ids are the entries' ranks, whatever order the file lists them in.
                let mut ranked = list
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let text = t
                            .get("token_str")
                            .and_then(serde_json::Value::as_str)
                            .ok_or("a special token without token_str")?;
                        let rank = t
                            .get("rank")
                            .and_then(serde_json::Value::as_u64)
                            .unwrap_or(i as u64);
                        Ok((rank, text.to_string()))
                    })
                    .collect::<std::result::Result<Vec<_>, String>>()?;
                ranked.sort();
                if ranked.iter().enumerate().any(|(i, (r, _))| *r != i as u64) {
                    return Err("special token ranks are not 0, 1, 2, … without gaps".into());
                }
                ranked.into_iter().map(|(_, t)| t).collect()
            }
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
            .ok_or("config.version is missing (mistral-common needs it to choose the chat format)")?
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

    /// The special tokens' texts, in id order (ids 0..n_special).
    pub fn specials(&self) -> &[String] {
        &self.specials
    }

    /// Each rank's bytes, in rank order (token id = n_special + rank).
    pub fn pieces(&self) -> &[Vec<u8>] {
        &self.pieces
    }

    /// The rank of a byte string, if it is a token.
    pub fn rank(&self, bytes: &[u8]) -> Option<u32> {
        self.ranks.get(bytes).copied()
    }

    /// The split pattern (what GGUF's `tokenizer.ggml.pre = "tekken"` stands for).
    pub fn pattern(&self) -> &str {
        self.pattern.as_str()
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
    pub fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        let offset = self.specials.len() as u32;
        let mut ids = Vec::new();
        for m in self.pattern.find_iter(text) {
            let m = m.map_err(|e| format!("the pre-tokenizer pattern failed: {e}"))?;
            let piece = m.as_str().as_bytes();
            match self.ranks.get(piece) {
                Some(&r) => ids.push(r + offset),
                None => ids.extend(self.merge(piece).into_iter().map(|r| r + offset)),
            }
        }
        Ok(ids)
    }

    /// Like [`encode`](Self::encode), but special-token text becomes that token.
    pub fn encode_parsing_special(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
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
                    ids.extend(self.encode(&text[start..i])?);
                    ids.push(id as u32);
                    i += s.len();
                    start = i;
                }
                None => i += text[i..].chars().next().map_or(1, char::len_utf8),
            }
        }
        ids.extend(self.encode(&text[start..])?);
        Ok(ids)
    }

    /// tiktoken's byte-pair merge: join the adjacent pair whose bytes have the lowest rank
    /// (leftmost on ties) until no adjacent pair is a token. A heap of candidate pairs over a
    /// linked list of parts keeps a long piece (a run of CJK text) O(n log n).
    fn merge(&self, piece: &[u8]) -> Vec<u32> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let n = piece.len();
        // Part k spans piece[start[k]..end[k]]; merged-away parts have start == end.
        let mut start: Vec<usize> = (0..n).collect();
        let mut end: Vec<usize> = (1..=n).collect();
        let mut next: Vec<Option<usize>> = (1..=n).map(|k| (k < n).then_some(k)).collect();
        let mut prev: Vec<Option<usize>> = (0..n).map(|k| k.checked_sub(1)).collect();
        let mut heap = BinaryHeap::new();
        let rank_of = |a: usize, b: usize| self.ranks.get(&piece[a..b]).copied();
        for k in 0..n.saturating_sub(1) {
            if let Some(r) = rank_of(k, k + 2) {
                heap.push(Reverse((r, k, k + 2)));
            }
        }
        while let Some(Reverse((_, left, span_end))) = heap.pop() {
            // Stale when the left part changed or its neighbour is no longer the same.
            let Some(right) = next[left] else { continue };
            if start[left] == end[left] || end[right] != span_end {
                continue;
            }
            end[left] = end[right];
            start[right] = end[right];
            next[left] = next[right];
            if let Some(nn) = next[right] {
                prev[nn] = Some(left);
                if let Some(r) = rank_of(start[left], end[nn]) {
                    heap.push(Reverse((r, left, end[nn])));
                }
            }
            if let Some(p) = prev[left] {
                if let Some(r) = rank_of(start[p], end[left]) {
                    heap.push(Reverse((r, p, end[left])));
                }
            }
        }
        (0..n)
            .filter(|&k| start[k] < end[k])
            // Every single byte is a token in a byte-level vocabulary.
            .map(|k| rank_of(start[k], end[k]).unwrap_or(0))
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
            "config": {"pattern": "[a-z]+| ", "default_vocab_size": 9, "default_num_special_tokens": 3, "version": "v7"},
            "vocab": vocab,
            "special_tokens": [{"token_str": "<unk>"}, {"token_str": "<s>"}],
        });
        let t = Tekken::from_json(&json).unwrap();
        // "abc" is one token; "cab" merges "ab" (rank 3) and keeps "c".
        assert_eq!(t.encode("abc").unwrap(), vec![3 + 5]);
        assert_eq!(t.encode("cab").unwrap(), vec![3 + 2, 3 + 3]);
        assert_eq!(t.decode(&[1, 3 + 2, 3 + 3]), "cab");
        assert_eq!(t.special_id("<SPECIAL_2>"), Some(2));
        assert_eq!(t.encode_parsing_special("<s>ab").unwrap(), vec![1, 3 + 3]);
    }
}
