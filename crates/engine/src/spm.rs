//! SentencePiece-BPE as GGUF stores it (`tokenizer.ggml.model = "llama"`): pieces with scores,
//! merged greedily by score, unknown characters spelled as `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// Token types llama.cpp's converter writes.
pub const TYPE_UNKNOWN: i32 = 2;
pub const TYPE_CONTROL: i32 = 3;
pub const TYPE_USER_DEFINED: i32 = 4;
pub const TYPE_BYTE: i32 = 6;

const SPACE: char = '▁';

pub struct SpmVocab {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    index: HashMap<String, u32>,
    byte_ids: [Option<u32>; 256],
    /// Control and user-defined pieces, longest first: recognised in prompt text.
    specials: Vec<(String, u32)>,
    /// User-defined pieces, longest first: always one piece, never merged (as sentencepiece).
    user_defined: Vec<String>,
    unk: Option<u32>,
    add_space_prefix: bool,
}

impl SpmVocab {
    pub fn new(
        pieces: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        unk: Option<u32>,
        add_space_prefix: bool,
    ) -> Self {
        let mut index = HashMap::with_capacity(pieces.len());
        let mut byte_ids = [None; 256];
        for (i, p) in pieces.iter().enumerate() {
            let is_byte = types.get(i) == Some(&TYPE_BYTE);
            if is_byte {
                if let Some(b) = parse_byte_piece(p) {
                    byte_ids[b as usize] = Some(i as u32);
                }
            } else if !matches!(types.get(i), Some(&TYPE_CONTROL | &TYPE_UNKNOWN)) {
                // As sentencepiece: control and unknown pieces are never reached by merging.
                index.entry(p.clone()).or_insert(i as u32);
            }
        }
        let mut specials: Vec<(String, u32)> = pieces
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                !p.is_empty() && matches!(types.get(*i), Some(&TYPE_CONTROL | &TYPE_USER_DEFINED))
            })
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let user_defined = specials
            .iter()
            .filter(|(_, id)| types.get(*id as usize) == Some(&TYPE_USER_DEFINED))
            .map(|(p, _)| p.clone())
            .collect();
        Self {
            pieces,
            scores,
            types,
            index,
            byte_ids,
            specials,
            user_defined,
            unk,
            add_space_prefix,
        }
    }

    /// The id of the piece spelled `text`, control pieces included.
    pub fn id_of(&self, text: &str) -> Option<u32> {
        self.index
            .get(text)
            .copied()
            .or_else(|| self.pieces.iter().position(|p| p == text).map(|i| i as u32))
    }

    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    /// Text → ids, as sentencepiece encodes it (control tokens in the text stay literal).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut s = String::with_capacity(text.len() + 3);
        if self.add_space_prefix {
            s.push(SPACE);
        }
        s.extend(text.chars().map(|c| if c == ' ' { SPACE } else { c }));
        let spans = self.merge(&s);
        let mut ids = Vec::with_capacity(spans.len());
        for (a, b) in spans {
            let piece = &s[a..b];
            match self.index.get(piece) {
                Some(&id) => ids.push(id),
                None => {
                    for byte in piece.bytes() {
                        ids.extend(self.byte_ids[byte as usize].or(self.unk));
                    }
                }
            }
        }
        ids
    }

    /// Merges the characters of `s` into pieces, best-scoring pair first (leftmost on ties), as
    /// sentencepiece's BPE does: a linked list of symbols and a heap of candidate pairs, so a
    /// long prompt costs O(n log n), not O(n²). Returns the pieces as byte ranges of `s`.
    fn merge(&self, s: &str) -> Vec<(usize, usize)> {
        struct Sym {
            start: usize,
            end: usize,
            prev: Option<usize>,
            next: Option<usize>,
            /// A user-defined piece: takes part in no merge.
            frozen: bool,
        }
        let mut syms: Vec<Sym> = Vec::with_capacity(s.len());
        let mut at = 0;
        while at < s.len() {
            let user = self
                .user_defined
                .iter()
                .find(|p| s[at..].starts_with(p.as_str()));
            let len = match user {
                Some(p) => p.len(),
                None => s[at..].chars().next().map_or(1, char::len_utf8),
            };
            let i = syms.len();
            syms.push(Sym {
                start: at,
                end: at + len,
                prev: i.checked_sub(1),
                next: Some(i + 1),
                frozen: user.is_some(),
            });
            at += len;
        }
        if let Some(last) = syms.last_mut() {
            last.next = None;
        }
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<Candidate>, syms: &[Sym], left: usize, right: usize| {
            if syms[left].frozen || syms[right].frozen {
                return;
            }
            let (a, b) = (syms[left].start, syms[right].end);
            if let Some(&id) = self.index.get(&s[a..b]) {
                let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
                heap.push(Candidate {
                    score,
                    left,
                    right,
                    len: b - a,
                });
            }
        };
        for i in 1..syms.len() {
            push(&mut heap, &syms, i - 1, i);
        }
        while let Some(c) = heap.pop() {
            let (l, r) = (&syms[c.left], &syms[c.right]);
            // Stale: one side was merged away or grew since this pair was queued.
            if l.start == l.end
                || r.start == r.end
                || l.next != Some(c.right)
                || r.end - l.start != c.len
            {
                continue;
            }
            let (r_end, r_next) = (r.end, r.next);
            syms[c.left].end = r_end;
            syms[c.left].next = r_next;
            syms[c.right].end = syms[c.right].start;
            if let Some(n) = r_next {
                syms[n].prev = Some(c.left);
                push(&mut heap, &syms, c.left, n);
            }
            if let Some(p) = syms[c.left].prev {
                push(&mut heap, &syms, p, c.left);
            }
        }
        syms.iter()
            .filter(|x| x.start < x.end)
            .map(|x| (x.start, x.end))
            .collect()
    }

    /// Like [`encode`](Self::encode), but text spelling a control token becomes that token.
    /// As llama.cpp does, the text after a control token gets the space prefix again.
    pub fn encode_parsing_special(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < text.len() {
            let hit = self
                .specials
                .iter()
                .find(|(s, _)| text[i..].starts_with(s.as_str()));
            match hit {
                Some((s, id)) => {
                    ids.extend(self.encode(&text[start..i]));
                    ids.push(*id);
                    i += s.len();
                    start = i;
                }
                None => i += text[i..].chars().next().map_or(1, char::len_utf8),
            }
        }
        ids.extend(self.encode(&text[start..]));
        ids
    }

    /// The bytes a token stands for: `▁` → space, `<0xXX>` → that byte, control → nothing.
    pub fn token_bytes(&self, id: u32, out: &mut Vec<u8>) {
        let Some(p) = self.pieces.get(id as usize) else {
            return;
        };
        match self.types.get(id as usize).copied() {
            Some(TYPE_CONTROL) => {}
            Some(TYPE_BYTE) => out.extend(parse_byte_piece(p)),
            _ => {
                for c in p.chars() {
                    let c = if c == SPACE { ' ' } else { c };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }

    /// Ids → text. Like sentencepiece, the dummy-prefix space of the first token is dropped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            self.token_bytes(id, &mut bytes);
        }
        let start = usize::from(self.add_space_prefix && bytes.first() == Some(&b' '));
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

/// A pair of adjacent symbols whose concatenation is a piece: higher score first, then leftmost.
struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Candidate {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Candidate {
    fn cmp(&self, o: &Self) -> Ordering {
        // Equal scores (0.0 and -0.0 included) go to the leftmost pair, as in sentencepiece.
        let by_score = self.score.partial_cmp(&o.score).unwrap_or(Ordering::Equal);
        by_score.then(o.left.cmp(&self.left))
    }
}

fn parse_byte_piece(p: &str) -> Option<u8> {
    let hex = p.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> SpmVocab {
        let pieces: Vec<String> = [
            "<unk>", "<s>", "</s>", "▁", "h", "i", "▁h", "▁hi", "<0xC3>", "<0xA9>",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let scores = vec![0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -0.5, -0.1, 0.0, 0.0];
        let types = vec![2, 3, 3, 1, 1, 1, 1, 1, 6, 6];
        SpmVocab::new(pieces, scores, types, Some(0), true)
    }

    #[test]
    fn merges_by_score_and_falls_back_to_bytes() {
        let v = toy();
        assert_eq!(v.encode("hi"), vec![7]);
        assert_eq!(v.encode("hié"), vec![7, 8, 9]);
        assert_eq!(v.decode(&[7, 8, 9]), "hié");
        assert_eq!(v.decode(&[1, 7]), "hi");
    }
}
