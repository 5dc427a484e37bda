//! llama.cpp's saved log-probabilities (`llama-perplexity --kl-divergence-base`), so a base
//! run saved by either program can be compared against by either.
//!
//! Layout, little-endian: `_logits_`, u32 n_ctx, i32 n_vocab, i32 n_chunk, the evaluated
//! tokens (i32 × n_chunk·n_ctx), then for every chunk the scored rows (n_ctx − 1 − n_ctx/2
//! of them), each `2·⌈n_vocab/2⌉ + 4` u16s: f32 scale, f32 lowest log-prob, then each
//! token's log-prob as `lowest + scale·q` in 16 bits over the top 16 nats.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{EvalError, Result};
use crate::logprob::RowSoftmax;

const MAGIC: &[u8; 8] = b"_logits_";
/// Log-probs more than this far below the top are stored as the floor.
const RANGE: f32 = 16.0;

/// What a logits file says about the run that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogitsHeader {
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunk: usize,
    /// `n_chunk · n_ctx` tokens, as tokenized (before each window's BOS).
    pub tokens: Vec<u32>,
}

impl LogitsHeader {
    /// u16s per stored row.
    fn row_len(&self) -> usize {
        2 * self.n_vocab.div_ceil(2) + 4
    }

    fn rows_per_chunk(&self) -> usize {
        self.n_ctx - 1 - self.n_ctx / 2
    }

    fn file_len(&self) -> u64 {
        let rows = (self.n_chunk * self.rows_per_chunk()) as u64;
        20 + 4 * self.tokens.len() as u64 + rows * self.row_len() as u64 * 2
    }
}

pub struct LogitsWriter {
    out: BufWriter<File>,
    path: PathBuf,
    header: LogitsHeader,
    row: Vec<u16>,
}

impl LogitsWriter {
    pub fn create(path: &Path, header: LogitsHeader) -> Result<Self> {
        let err = |e| EvalError::io(path, e);
        let file = File::create(path).map_err(err)?;
        let mut out = BufWriter::new(file);
        let mut head = Vec::with_capacity(20 + 4 * header.tokens.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&(header.n_ctx as u32).to_le_bytes());
        head.extend_from_slice(&(header.n_vocab as i32).to_le_bytes());
        head.extend_from_slice(&(header.n_chunk as i32).to_le_bytes());
        for &t in &header.tokens {
            head.extend_from_slice(&(t as i32).to_le_bytes());
        }
        out.write_all(&head).map_err(err)?;
        Ok(Self {
            out,
            path: path.to_path_buf(),
            row: vec![0; header.row_len()],
            header,
        })
    }

    /// Stores one row of logits as 16-bit log-probabilities.
    pub fn write_row(&mut self, logits: &[f32]) -> Result<()> {
        encode_row(logits, &mut self.row);
        let bytes: Vec<u8> = self.row.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.out
            .write_all(&bytes)
            .map_err(|e| EvalError::io(&self.path, e))
    }

    pub fn finish(mut self) -> Result<()> {
        self.out.flush().map_err(|e| EvalError::io(&self.path, e))?;
        let len = self
            .out
            .get_ref()
            .metadata()
            .map_err(|e| EvalError::io(&self.path, e))?
            .len();
        if len != self.header.file_len() {
            return Err(EvalError::Invalid(format!(
                "{}: wrote {len} bytes where the header promises {}",
                self.path.display(),
                self.header.file_len()
            )));
        }
        Ok(())
    }
}

/// llama.cpp's packing: the floor is max(min logit, max − 16); scale spans floor..max in
/// 65535 steps; each logit above the floor rounds to the nearest step (ties to even).
fn encode_row(logits: &[f32], out: &mut [u16]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = logits.iter().copied().fold(f32::INFINITY, f32::min);
    let floor = min.max(max - RANGE);
    let lse = RowSoftmax::new(logits).log_sum_exp as f32;
    let lowest = floor - max - lse;
    let scale = (max - floor) / 65535.0;
    let (head, q) = out.split_at_mut(4);
    let (s, l) = (scale.to_le_bytes(), lowest.to_le_bytes());
    head[0] = u16::from_le_bytes([s[0], s[1]]);
    head[1] = u16::from_le_bytes([s[2], s[3]]);
    head[2] = u16::from_le_bytes([l[0], l[1]]);
    head[3] = u16::from_le_bytes([l[2], l[3]]);
    q.fill(0);
    if scale > 0.0 {
        let inv = 1.0 / scale;
        for (d, &x) in q.iter_mut().zip(logits) {
            if x > floor {
                *d = (inv * (x - floor)).round_ties_even() as u16;
            }
        }
    }
}

/// One stored row: ln p(token) for every token, to 16 bits.
pub struct BaseRow<'a> {
    scale: f32,
    lowest: f32,
    q: &'a [u16],
}

impl BaseRow<'_> {
    pub fn log_prob(&self, token: usize) -> f32 {
        self.scale * f32::from(self.q[token]) + self.lowest
    }
}

pub struct LogitsReader {
    input: BufReader<File>,
    path: PathBuf,
    pub header: LogitsHeader,
    row: Vec<u16>,
    bytes: Vec<u8>,
}

impl LogitsReader {
    /// Opens a saved file, checking its magic and that its length matches its header.
    pub fn open(path: &Path) -> Result<Self> {
        let err = |e| EvalError::io(path, e);
        let bad = |msg: String| EvalError::data(path, msg);
        let file = File::open(path).map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        let mut input = BufReader::new(file);
        let mut head = [0u8; 20];
        input
            .read_exact(&mut head)
            .map_err(|_| bad(format!("{len} bytes is too short for a logits file")))?;
        if &head[..8] != MAGIC {
            return Err(bad(
                "not a saved logits file (no `_logits_` magic; save one with --save-logits)".into(),
            ));
        }
        let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let (n_ctx, n_vocab, n_chunk) = (word(8) as usize, word(12) as i32, word(16) as i32);
        if n_ctx < 4 || n_vocab <= 0 || n_chunk <= 0 {
            return Err(bad(format!(
                "impossible header: n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}"
            )));
        }
        let (n_vocab, n_chunk) = (n_vocab as usize, n_chunk as usize);
        let n_tokens = n_ctx
            .checked_mul(n_chunk)
            .filter(|&n| (n as u64) * 4 <= len)
            .ok_or_else(|| {
                bad(format!(
                    "header claims {n_chunk} chunks of {n_ctx} tokens, more than the file holds"
                ))
            })?;
        let mut raw = vec![0u8; 4 * n_tokens];
        input
            .read_exact(&mut raw)
            .map_err(|_| bad("file ends inside the token list".into()))?;
        let tokens: Vec<u32> = raw
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32)
            .collect();
        let header = LogitsHeader {
            n_ctx,
            n_vocab,
            n_chunk,
            tokens,
        };
        if len != header.file_len() {
            return Err(bad(format!(
                "{len} bytes, but a file of {n_chunk} chunks × {n_ctx} tokens × {n_vocab} vocabulary has {} (truncated?)",
                header.file_len()
            )));
        }
        if let Some(&t) = header.tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(bad(format!(
                "token {t} is outside the vocabulary of {n_vocab}"
            )));
        }
        Ok(Self {
            input,
            path: path.to_path_buf(),
            row: vec![0; header.row_len()],
            bytes: vec![0; 2 * header.row_len()],
            header,
        })
    }

    /// The next stored row.
    pub fn next_row(&mut self) -> Result<BaseRow<'_>> {
        self.input
            .read_exact(&mut self.bytes)
            .map_err(|e| EvalError::io(&self.path, e))?;
        for (d, b) in self.row.iter_mut().zip(self.bytes.chunks_exact(2)) {
            *d = u16::from_le_bytes([b[0], b[1]]);
        }
        let f = |i: usize| {
            let (a, b) = (self.row[i].to_le_bytes(), self.row[i + 1].to_le_bytes());
            f32::from_le_bytes([a[0], a[1], b[0], b[1]])
        };
        Ok(BaseRow {
            scale: f(0),
            lowest: f(2),
            q: &self.row[4..4 + self.header.n_vocab],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("bora-logits-{}-{name}", std::process::id()))
    }

    #[test]
    fn stored_rows_give_back_the_log_probs_within_the_16_bit_step() {
        let header = LogitsHeader {
            n_ctx: 8,
            n_vocab: 7,
            n_chunk: 1,
            tokens: vec![1, 2, 3, 4, 5, 6, 0, 1],
        };
        let rows: Vec<Vec<f32>> = (0..3)
            .map(|r| {
                (0..7)
                    .map(|i| ((i * 5 + r) % 7) as f32 * 1.3 - 2.0)
                    .collect()
            })
            .collect();
        let path = temp("roundtrip");
        let mut w = LogitsWriter::create(&path, header.clone()).unwrap();
        for r in &rows {
            w.write_row(r).unwrap();
        }
        w.finish().unwrap();
        let mut rd = LogitsReader::open(&path).unwrap();
        assert_eq!(rd.header, header);
        for r in &rows {
            let s = RowSoftmax::new(r);
            let base = rd.next_row().unwrap();
            for t in 0..7 {
                let exact = s.log_prob(r, t as u32) as f32;
                assert!((base.log_prob(t) - exact).abs() < 16.0 / 65535.0 + 1e-5);
            }
        }
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn truncated_and_foreign_files_are_refused_by_name() {
        let header = LogitsHeader {
            n_ctx: 8,
            n_vocab: 5,
            n_chunk: 1,
            tokens: vec![0; 8],
        };
        let path = temp("trunc");
        let mut w = LogitsWriter::create(&path, header).unwrap();
        for _ in 0..3 {
            w.write_row(&[0.0, 1.0, 2.0, 3.0, 4.0]).unwrap();
        }
        w.finish().unwrap();
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 3]).unwrap();
        let e = LogitsReader::open(&path)
            .err()
            .expect("truncated file accepted");
        assert!(e.to_string().contains("truncated"), "{e}");
        std::fs::write(&path, b"GGUF and some other bytes here").unwrap();
        let e = LogitsReader::open(&path)
            .err()
            .expect("foreign file accepted");
        assert!(e.to_string().contains("magic"), "{e}");
        std::fs::remove_file(&path).ok();
    }
}
