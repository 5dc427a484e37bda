//! Writing GGUF v3 files: metadata, the tensor directory, then each tensor's data, aligned.
//!
//! Tensor data is produced one tensor at a time by the caller and written as it comes, so a
//! file larger than memory can be written.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use bora_kernels::DType;

use crate::error::{ModelError, Result};
use crate::gguf::Value;

/// One tensor of the file to write. `shape` is row-major, outermost first (numpy order);
/// GGUF stores it reversed.
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl TensorSpec {
    /// Bytes of data, or `None` when the innermost dimension splits a block.
    pub fn bytes(&self) -> Option<usize> {
        let cols = *self.shape.last()?;
        let rows: usize = self.shape[..self.shape.len() - 1].iter().product();
        self.dtype.row_bytes(cols).ok()?.checked_mul(rows)
    }
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend(x.to_le_bytes()),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::Str(s) => put_str(out, s),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
        Value::Array(items) => {
            // An empty array's element type is not known after reading; any type reads back
            // as an empty array.
            let ty = items.first().map_or(4, value_type);
            out.extend(ty.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}

fn pad_to(n: usize, align: usize) -> usize {
    n.div_ceil(align) * align
}

/// Writes `path`: `metadata`, then `tensors` with the data `data(i)` returns for tensor `i`
/// (it must return exactly [`TensorSpec::bytes`] bytes).
pub fn write_gguf(
    path: &Path,
    metadata: &BTreeMap<String, Value>,
    tensors: &[TensorSpec],
    mut data: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<()> {
    let io = |e: std::io::Error| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let align = metadata
        .get("general.alignment")
        .and_then(Value::as_u64)
        .map_or(32, |a| a as usize);
    let mut head = b"GGUF".to_vec();
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut head, k);
        head.extend(value_type(v).to_le_bytes());
        put_value(&mut head, v);
    }
    let mut sizes = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    for t in tensors {
        let size = t.bytes().ok_or_else(|| ModelError::Tensor {
            path: path.to_path_buf(),
            name: t.name.clone(),
            msg: format!("shape {:?} does not split into {} blocks", t.shape, t.dtype),
        })?;
        put_str(&mut head, &t.name);
        head.extend((t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            head.extend((*d as u64).to_le_bytes());
        }
        head.extend(t.dtype.ggml_id().to_le_bytes());
        head.extend((offset as u64).to_le_bytes());
        sizes.push(size);
        offset = pad_to(offset + size, align);
    }
    head.resize(pad_to(head.len(), align), 0);
    let mut w = BufWriter::new(std::fs::File::create(path).map_err(io)?);
    w.write_all(&head).map_err(io)?;
    for (i, (t, &size)) in tensors.iter().zip(&sizes).enumerate() {
        let bytes = data(i)?;
        if bytes.len() != size {
            return Err(ModelError::Tensor {
                path: path.to_path_buf(),
                name: t.name.clone(),
                msg: format!("{} bytes of data for a {size}-byte tensor", bytes.len()),
            });
        }
        w.write_all(&bytes).map_err(io)?;
        w.write_all(&vec![0u8; pad_to(size, align) - size])
            .map_err(io)?;
    }
    w.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    #[test]
    fn what_is_written_reads_back() {
        let dir = std::env::temp_dir().join(format!("bora-gguf-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.gguf");
        let mut meta = BTreeMap::new();
        meta.insert("general.architecture".into(), Value::Str("llama".into()));
        meta.insert("general.alignment".into(), Value::U32(64));
        meta.insert(
            "a.list".into(),
            Value::Array(vec![Value::F32(1.5), Value::F32(-2.0)]),
        );
        meta.insert("a.flag".into(), Value::Bool(true));
        let tensors = vec![
            TensorSpec {
                name: "x".into(),
                shape: vec![3],
                dtype: DType::F32,
            },
            TensorSpec {
                name: "w".into(),
                shape: vec![2, 64],
                dtype: DType::Q8_0,
            },
        ];
        write_gguf(&path, &meta, &tensors, |i| {
            Ok(vec![i as u8 + 1; tensors[i].bytes().unwrap()])
        })
        .unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.metadata, meta);
        let w = &g.tensors["w"];
        assert_eq!(
            (w.shape.clone(), w.dtype.clone()),
            (vec![2, 64], Ok(DType::Q8_0))
        );
        assert_eq!(w.start % 64, 0);
        assert!(w.bytes().iter().all(|&b| b == 2));
        assert!(g.tensors["x"].bytes().iter().all(|&b| b == 1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
