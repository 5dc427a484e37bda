//! The safetensors format: `u64 header_len | JSON header | data`, read in place.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bora_kernels::DType;
use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::mmap::MappedFile;
use crate::tensor::TensorRef;

#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// Largest header we accept; real ones are a few hundred KB.
const MAX_HEADER: u64 = 100 << 20;

/// Reads one safetensors file's directory, checking every tensor's range against the file.
pub fn read_directory(path: &Path) -> Result<BTreeMap<String, TensorRef>> {
    let file = MappedFile::open(path)?;
    let bytes = file.bytes();
    if bytes.len() < 8 {
        return Err(ModelError::format(
            path,
            "truncated: shorter than the 8-byte header length",
        ));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if header_len > MAX_HEADER || 8 + header_len > bytes.len() as u64 {
        return Err(ModelError::format(
            path,
            format!(
                "header length {header_len} runs past the end of the file ({} bytes)",
                bytes.len()
            ),
        ));
    }
    let data_start = 8 + header_len as usize;
    let header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&bytes[8..data_start])
        .map_err(|e| ModelError::format(path, format!("header is not valid JSON: {e}")))?;
    let data_len = bytes.len() - data_start;
    let mut out = BTreeMap::new();
    for (name, value) in header {
        if name == "__metadata__" {
            continue;
        }
        let bad = |msg: String| ModelError::Tensor {
            path: path.to_path_buf(),
            name: name.clone(),
            msg,
        };
        let entry: Entry = serde_json::from_value(value)
            .map_err(|e| bad(format!("malformed header entry: {e}")))?;
        let dtype = match entry.dtype.as_str() {
            "F32" => Ok(DType::F32),
            "F16" => Ok(DType::F16),
            "BF16" => Ok(DType::BF16),
            other => Err(other.to_string()),
        };
        let [start, end] = entry.data_offsets;
        if start > end || end > data_len {
            return Err(bad(format!(
                "data offsets [{start}, {end}] fall outside the {data_len} bytes of tensor data"
            )));
        }
        let numel = entry
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("shape {:?} overflows", entry.shape)))?;
        let elem_size = match entry.dtype.as_str() {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            _ => 1,
        };
        if numel.checked_mul(elem_size) != Some(end - start) {
            return Err(bad(format!(
                "shape {:?} of {} needs {} bytes but the offsets give {}",
                entry.shape,
                entry.dtype,
                numel.saturating_mul(elem_size),
                end - start
            )));
        }
        out.insert(
            name.clone(),
            TensorRef {
                name,
                dtype,
                shape: entry.shape,
                file: Arc::clone(&file),
                start: data_start + start,
                len: end - start,
            },
        );
    }
    Ok(out)
}
