//! `bora quantize IN OUT --type T`: a GGUF file's weights stored again in another quant type,
//! each tensor's type chosen as llama.cpp's llama-quantize chooses it for that file type, so
//! the result is what users expect to find in a file of that name.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Result};
use bora_kernels::quantize::quantize_row;
use bora_kernels::{DType, MatRef};
use bora_model::gguf::{GgufFile, Value};
use bora_model::gguf_write::{write_gguf, TensorSpec};
use rayon::prelude::*;

use super::hf_to_gguf::SourceTensor;
use crate::args::QuantizeArgs;

/// llama.cpp's file types that bora writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    /// Every tensor F32 (llama.cpp's ALL_F32): a lossless copy, for checking layouts.
    F32,
    /// Matrices F16, norms F32.
    F16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    /// Q2_K, with Q3_K for ffn_down and attn_output, and attn_v Q4_K where four or more query
    /// heads share a KV head (Q3_K where fewer do).
    Q2K,
    /// Q3_K throughout (the output Q6_K, as in every k-quant mix).
    Q3KS,
    /// Q3_K, with Q5_K for the first two attn_v and the first sixteenth of ffn_down, Q4_K for
    /// the other attn_v, ffn_down and attn_output.
    Q3KM,
    /// Q3_K, with Q5_K for attn_v, ffn_down and attn_output.
    Q3KL,
    /// Q4_K, with Q5_K for the first four attn_v and the first eighth of ffn_down.
    Q4KS,
    /// Q4_K, with Q6_K for attn_v / ffn_down in llama.cpp's "more bits" layers.
    Q4KM,
    /// Q5_K throughout.
    Q5KS,
    /// Q5_K, with Q6_K where Q4_K_M has it.
    Q5KM,
    Q6K,
}

/// The names `--type` takes: llama-quantize's, its aliases included (q3_k, q4_k and q5_k are
/// the _M mixes there too).
const FILE_TYPES: [(&str, FileType); 19] = [
    ("f32", FileType::F32),
    ("f16", FileType::F16),
    ("q8_0", FileType::Q8_0),
    ("q4_0", FileType::Q4_0),
    ("q4_1", FileType::Q4_1),
    ("q5_0", FileType::Q5_0),
    ("q5_1", FileType::Q5_1),
    ("q2_k", FileType::Q2K),
    ("q3_k", FileType::Q3KM),
    ("q3_k_s", FileType::Q3KS),
    ("q3_k_m", FileType::Q3KM),
    ("q3_k_l", FileType::Q3KL),
    ("q4_k", FileType::Q4KM),
    ("q4_k_s", FileType::Q4KS),
    ("q4_k_m", FileType::Q4KM),
    ("q5_k", FileType::Q5KM),
    ("q5_k_s", FileType::Q5KS),
    ("q5_k_m", FileType::Q5KM),
    ("q6_k", FileType::Q6K),
];

pub fn parse_file_type(s: &str) -> std::result::Result<FileType, String> {
    FILE_TYPES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(s))
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = FILE_TYPES.iter().map(|(n, _)| *n).collect();
            format!("'{s}' is not one of {}", names.join(", "))
        })
}

impl FileType {
    fn base(self) -> DType {
        match self {
            FileType::F32 => DType::F32,
            FileType::F16 => DType::F16,
            FileType::Q8_0 => DType::Q8_0,
            FileType::Q4_0 => DType::Q4_0,
            FileType::Q4_1 => DType::Q4_1,
            FileType::Q5_0 => DType::Q5_0,
            FileType::Q5_1 => DType::Q5_1,
            FileType::Q2K => DType::Q2_K,
            FileType::Q3KS | FileType::Q3KM | FileType::Q3KL => DType::Q3_K,
            FileType::Q4KS | FileType::Q4KM => DType::Q4_K,
            FileType::Q5KS | FileType::Q5KM => DType::Q5_K,
            FileType::Q6K => DType::Q6_K,
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    fn ftype(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q4_1 => 3,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q5_1 => 9,
            FileType::Q2K => 10,
            FileType::Q3KS => 11,
            FileType::Q3KM => 12,
            FileType::Q3KL => 13,
            FileType::Q4KS => 14,
            FileType::Q4KM => 15,
            FileType::Q5KS => 16,
            FileType::Q5KM => 17,
            FileType::Q6K => 18,
        }
    }
}

/// llama.cpp's layers that get more bits in the _M mixes: the first and last eighth, and
/// every third layer between.
fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    let eighth = n_layers / 8;
    layer < eighth || layer >= 7 * n_layers / 8 || (layer - eighth) % 3 == 2
}

fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// What llama.cpp's choice of a tensor's type depends on, besides its name and shape.
struct ModelShape {
    n_layers: usize,
    n_experts: usize,
    /// Query heads per KV head (0 where the file does not say).
    n_gqa: usize,
    /// No `output.weight`: the token embedding is also the output matrix, and gets its type.
    tied_output: bool,
}

/// The type a tensor is written in: llama.cpp's `llama_tensor_get_type` for bora's file types
/// (without an importance matrix), its rules for Mistral and Mixtral models.
fn target(ft: FileType, name: &str, shape: &[usize], m: &ModelShape) -> DType {
    let is_matrix = shape.len() >= 2 && !name.contains("ffn_gate_inp");
    if !is_matrix || ft == FileType::F32 {
        return DType::F32;
    }
    if ft == FileType::F16 {
        return DType::F16;
    }
    let cols = shape[shape.len() - 1];
    let base = ft.base();
    let layer = layer_of(name);
    let more_bits = layer.is_some_and(|l| use_more_bits(l, m.n_layers));
    let below = |n: usize| layer.is_some_and(|l| l < n);
    let eight_experts = m.n_experts == 8;
    let wanted = if name == "output.weight" || (m.tied_output && name == "token_embd.weight") {
        if !cols.is_multiple_of(base.block_elems()) {
            DType::Q8_0
        } else if base != DType::Q8_0 {
            DType::Q6_K
        } else {
            base
        }
    } else if name.contains("attn_v.") {
        match ft {
            // Each KV head serves many query heads; an 8-expert model's attention is a
            // small part of its size.
            _ if eight_experts => DType::Q8_0,
            FileType::Q2K if m.n_gqa >= 4 => DType::Q4_K,
            FileType::Q2K => DType::Q3_K,
            FileType::Q3KM if below(2) => DType::Q5_K,
            FileType::Q3KM => DType::Q4_K,
            FileType::Q3KL => DType::Q5_K,
            FileType::Q4KM | FileType::Q5KM if more_bits => DType::Q6_K,
            FileType::Q4KS if below(4) => DType::Q5_K,
            _ => base,
        }
    } else if name.contains("attn_k.") && eight_experts {
        DType::Q8_0
    } else if name.contains("attn_output.") {
        match ft {
            FileType::Q2K | FileType::Q3KS | FileType::Q3KM | FileType::Q4KS | FileType::Q4KM
                if eight_experts =>
            {
                DType::Q5_K
            }
            _ if eight_experts => base,
            FileType::Q2K => DType::Q3_K,
            FileType::Q3KM => DType::Q4_K,
            FileType::Q3KL => DType::Q5_K,
            _ => base,
        }
    } else if name.contains("ffn_down") {
        match ft {
            FileType::Q2K => DType::Q3_K,
            FileType::Q3KM if below(m.n_layers / 16) => DType::Q5_K,
            FileType::Q3KM => DType::Q4_K,
            FileType::Q3KL => DType::Q5_K,
            FileType::Q4KM | FileType::Q5KM if more_bits => DType::Q6_K,
            FileType::Q4KS if below(m.n_layers / 8) => DType::Q5_K,
            _ => base,
        }
    } else {
        base
    };
    fallback(wanted, cols)
}

/// llama.cpp's type for rows that don't split into `wanted`'s blocks: a 256-weight k-quant
/// falls back to a 32-weight type of about its bits, and what still doesn't fit to F16.
fn fallback(wanted: DType, cols: usize) -> DType {
    if wanted.row_bytes(cols).is_ok() {
        return wanted;
    }
    let next = match wanted {
        DType::Q2_K | DType::Q3_K => DType::Q4_0,
        DType::Q4_K => DType::Q5_0,
        DType::Q5_K => DType::Q5_1,
        DType::Q6_K => DType::Q8_0,
        other => other,
    };
    if next.row_bytes(cols).is_ok() {
        next
    } else {
        DType::F16
    }
}

/// One tensor's rows, expanded to f32 and stored as `to` (or copied, where stored so): the
/// rows of each of `parts` in turn (all of one shape), row `i` of a part taking its input row
/// `row_of(i)`.
fn convert(
    parts: &[MatRef<'_>],
    to: DType,
    row_of: impl Fn(usize) -> usize + Sync,
) -> Result<Vec<u8>> {
    let Some(first) = parts.first() else {
        return Ok(Vec::new());
    };
    let (rows, cols) = (first.rows, first.cols);
    if parts.iter().any(|p| (p.rows, p.cols) != (rows, cols)) {
        bail!("the parts of a stacked tensor differ in shape");
    }
    let rb = to.row_bytes(cols)?;
    let mut out = vec![0u8; rb * rows * parts.len()];
    out.par_chunks_mut(rb).enumerate().try_for_each_init(
        || vec![0f32; cols],
        |row, (i, o)| -> Result<()> {
            let part = &parts[i / rows];
            // Already in the wanted type: copied as stored, as llama-quantize does, not
            // rounded a second time.
            if part.dtype == to {
                o.copy_from_slice(part.row(row_of(i % rows)));
                return Ok(());
            }
            part.dequantize_row_into(row_of(i % rows), row);
            match to {
                DType::F32 => {
                    for (b, v) in o.chunks_exact_mut(4).zip(row.iter()) {
                        b.copy_from_slice(&v.to_le_bytes());
                    }
                }
                DType::F16 => {
                    for (b, v) in o.chunks_exact_mut(2).zip(row.iter()) {
                        b.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
                    }
                }
                _ => quantize_row(to, row, o)?,
            }
            Ok(())
        },
    )?;
    Ok(out)
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    if a.input.canonicalize().ok() == a.output.canonicalize().ok() && a.output.exists() {
        bail!(
            "{}: the output would overwrite the input",
            a.output.display()
        );
    }
    let start = Instant::now();
    // The tensors to write, in order, with where their rows come from.
    let (mut metadata, sources) = if a.input.is_dir() {
        let s = super::hf_to_gguf::from_folder(&a.input)?;
        (s.metadata, s.tensors)
    } else {
        let g = GgufFile::open(&a.input)?;
        let mut tensors: Vec<_> = g.tensors.values().collect();
        tensors.sort_by_key(|t| t.start);
        let sources = tensors
            .into_iter()
            .map(|t| SourceTensor::whole(t.name.clone(), t.clone()))
            .collect::<Vec<_>>();
        (g.metadata.clone(), sources)
    };
    let arch = metadata
        .get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or("llama")
        .to_string();
    let count = |key: &str| {
        metadata
            .get(&format!("{arch}.{key}"))
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize
    };
    let n_heads = count("attention.head_count");
    // As llama.cpp reads a file: without a KV head count, as many KV heads as query heads.
    let n_kv_heads = if metadata.contains_key(&format!("{arch}.attention.head_count_kv")) {
        count("attention.head_count_kv")
    } else {
        n_heads
    };
    let shape = ModelShape {
        n_layers: count("block_count"),
        n_experts: count("expert_count"),
        n_gqa: n_heads.checked_div(n_kv_heads).unwrap_or(0),
        tied_output: !sources.iter().any(|t| t.name == "output.weight"),
    };
    let mut specs = Vec::with_capacity(sources.len());
    let mut requantized = BTreeMap::<String, usize>::new();
    for t in &sources {
        let to = target(a.file_type, &t.name, &t.shape, &shape);
        for part in &t.parts {
            let dtype = part.dtype()?;
            if dtype.is_quantized() && dtype != to {
                *requantized.entry(dtype.to_string()).or_default() += 1;
            }
        }
        specs.push(TensorSpec {
            name: t.name.clone(),
            shape: t.shape.clone(),
            dtype: to,
        });
    }
    if !requantized.is_empty() {
        let list: Vec<String> = requantized
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect();
        eprintln!(
            "bora: warning: {} tensors are already quantized ({}); quantizing them again \
             compounds the rounding",
            requantized.values().sum::<usize>(),
            list.join(", ")
        );
    }
    metadata.insert("general.file_type".into(), Value::U32(a.file_type.ftype()));
    metadata.insert("general.quantization_version".into(), Value::U32(2));
    let bar = super::progress::Progress::new("quantizing", super::quiet());
    write_gguf(&a.output, &metadata, &specs, |i| {
        bar.update(i + 1, specs.len());
        let s = &sources[i];
        let parts = s
            .parts
            .iter()
            .map(|t| {
                let cols = *t.shape.last().unwrap_or(&1);
                let rows: usize = t.shape[..t.shape.len().saturating_sub(1)].iter().product();
                MatRef::new(t.dtype()?, rows, cols, t.bytes()).ok_or_else(|| {
                    bora_model::ModelError::Tensor {
                        path: a.input.clone(),
                        name: t.name.clone(),
                        msg: "size does not match its shape".into(),
                    }
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        convert(&parts, specs[i].dtype, |r| s.source_row(r)).map_err(|e| {
            bora_model::ModelError::Tensor {
                path: a.output.clone(),
                name: s.name.clone(),
                msg: e.to_string(),
            }
        })
    })?;
    bar.finish();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for s in &specs {
        *counts.entry(s.dtype.to_string()).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(t, n)| format!("{t} {n}")).collect();
    // A folder's size is its files'.
    let size = |p: &std::path::Path| -> u64 {
        match std::fs::read_dir(p) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum(),
            Err(_) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        }
    };
    eprintln!(
        "bora: wrote {}: {} tensors ({}), {:.1} MB -> {:.1} MB in {:.1} s",
        a.output.display(),
        specs.len(),
        counts.join(", "),
        size(&a.input) as f64 / 1e6,
        size(&a.output) as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's Q4_K_M layout for a 32-layer model: 16 of 32 attn_v get Q6_K. (The bytes
    /// and types of whole files are checked against llama.cpp's own in tests/quantize.rs.)
    #[test]
    fn q4_k_m_gives_more_bits_where_llama_cpp_does() {
        let six: Vec<usize> = (0..32).filter(|&l| use_more_bits(l, 32)).collect();
        assert_eq!(six.len(), 16);
        assert_eq!(&six[..6], &[0, 1, 2, 3, 6, 9]);
        let dense = ModelShape {
            n_layers: 32,
            n_experts: 0,
            n_gqa: 4,
            tied_output: false,
        };
        let t = |name: &str, cols: usize| target(FileType::Q4KM, name, &[4096, cols], &dense);
        assert_eq!(t("blk.0.attn_v.weight", 4096), DType::Q6_K);
        assert_eq!(t("blk.4.attn_v.weight", 4096), DType::Q4_K);
        assert_eq!(t("blk.31.ffn_down.weight", 14336), DType::Q6_K);
        assert_eq!(t("blk.5.ffn_up.weight", 4096), DType::Q4_K);
        assert_eq!(t("output.weight", 4096), DType::Q6_K);
        // Rows that don't split into 256-blocks: Q4_K falls back to Q5_0, Q6_K to Q8_0.
        assert_eq!(t("blk.5.ffn_up.weight", 576), DType::Q5_0);
        assert_eq!(t("output.weight", 576), DType::Q8_0);
        assert_eq!(
            target(FileType::Q4_0, "blk.0.attn_norm.weight", &[4096], &dense),
            DType::F32
        );
        assert_eq!(
            target(FileType::Q8_0, "output.weight", &[10, 64], &dense),
            DType::Q8_0
        );
    }
}
