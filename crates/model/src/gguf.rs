//! GGUF v2/v3 reader: header, metadata, tensor directory, aligned data, all bounds-checked.
//!
//! Layout: `"GGUF" | u32 version | u64 n_tensors | u64 n_kv | kv… | tensor infos… | pad | data`.
//! Every count and length read from the file is checked against the bytes that remain before
//! anything is allocated for it, so a lying header gives an error, not an allocation or a panic.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bora_kernels::dtype::{ggml_block_layout, ggml_type_name};
use bora_kernels::DType;

use crate::error::{ModelError, Result};
use crate::mmap::MappedFile;
use crate::tensor::TensorRef;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A parsed GGUF file: metadata and the tensors, which stay in the mapped file.
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorRef>,
    pub file: Arc<MappedFile>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl Into<String>) -> ModelError {
        ModelError::format(self.path, format!("at byte {}: {}", self.pos, msg.into()))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                self.err(format!(
                    "truncated: {what} needs {n} bytes, {} remain",
                    self.bytes.len() - self.pos
                ))
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1, "u8")?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2, "u16")?.try_into().expect("2"),
        ))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, "u32")?.try_into().expect("4"),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, "u64")?.try_into().expect("8"),
        ))
    }

    /// A count that will drive a loop reading items of at least `min_item` bytes each.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize> {
        let n = self.u64()?;
        if n > (self.remaining() / min_item.max(1)) as u64 {
            return Err(self.err(format!(
                "{what} count {n} is larger than the file could hold (truncated or corrupt file)"
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64()?;
        if n > self.remaining() as u64 {
            return Err(self.err(format!(
                "{what}: string length {n} runs past the end of the file"
            )));
        }
        let raw = self.take(n as usize, what)?;
        Ok(String::from_utf8_lossy(raw).into_owned())
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => match self.u8()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("bool value {b} is neither 0 nor 1"))),
            },
            8 => Value::Str(self.string("string value")?),
            9 => {
                if depth > 2 {
                    return Err(self.err("arrays nested too deeply"));
                }
                let elem_ty = self.u32()?;
                let min = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    t => return Err(self.err(format!("unknown array element type {t}"))),
                };
                let n = self.count("array", min)?;
                // Bounded: a lying count must fail on the bytes, not on allocating for them.
                let mut items = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    items.push(self.value(elem_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            t => return Err(self.err(format!("unknown metadata value type {t}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = MappedFile::open(path)?;
        Self::parse(file)
    }

    pub fn parse(file: Arc<MappedFile>) -> Result<Self> {
        let path = file.path().to_path_buf();
        let mut c = Cursor {
            bytes: file.bytes(),
            pos: 0,
            path: &path,
        };
        let magic = c.take(4, "magic")?;
        if magic != b"GGUF" {
            return Err(ModelError::format(
                &path,
                format!("bad magic {magic:?}: not a GGUF file"),
            ));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::format(
                &path,
                format!("GGUF version {version} is not supported (2 and 3 are)"),
            ));
        }
        // A tensor info is at least 8 (name len) + 4 + 8 + 4 + 8 bytes; a kv at least 8 + 4 + 1.
        let n_tensors = c.count("tensor", 32)?;
        let n_kv = c.count("metadata", 13)?;
        let metadata = read_metadata(&mut c, n_kv)?;
        let alignment = alignment(&metadata, &path)?;
        let infos = (0..n_tensors)
            .map(|_| TensorInfo::read(&mut c))
            .collect::<Result<Vec<_>>>()?;
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for info in infos {
            let t = info.locate(&file, data_start, alignment)?;
            if tensors.contains_key(&t.name) {
                return Err(ModelError::Tensor {
                    path: path.clone(),
                    name: t.name,
                    msg: "appears twice in the tensor directory".to_string(),
                });
            }
            tensors.insert(t.name.clone(), t);
        }
        Ok(Self {
            version,
            metadata,
            tensors,
            file,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

fn read_metadata(c: &mut Cursor<'_>, n_kv: usize) -> Result<BTreeMap<String, Value>> {
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let ty = c.u32()?;
        let value = c.value(ty, 0).map_err(|e| match e {
            ModelError::Format { path, msg } => ModelError::Format {
                path,
                msg: format!("metadata '{key}': {msg}"),
            },
            other => other,
        })?;
        metadata.insert(key, value);
    }
    Ok(metadata)
}

/// `general.alignment`, 32 when absent; must be a power of two.
fn alignment(metadata: &BTreeMap<String, Value>, path: &Path) -> Result<usize> {
    match metadata.get("general.alignment") {
        None => Ok(32),
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => Ok(a as usize),
            _ => Err(ModelError::format(
                path,
                format!("general.alignment {v:?} is not a power of two"),
            )),
        },
    }
}

/// A tensor directory entry as stored: dims innermost first, offset into the data section.
struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    ty: u32,
    offset: u64,
}

impl TensorInfo {
    fn read(c: &mut Cursor<'_>) -> Result<Self> {
        let name = c.string("tensor name")?;
        let n_dims = c.u32()?;
        if n_dims == 0 || n_dims > 4 {
            return Err(c.err(format!(
                "tensor '{name}' has {n_dims} dimensions (1 to 4 allowed)"
            )));
        }
        let dims = (0..n_dims).map(|_| c.u64()).collect::<Result<Vec<_>>>()?;
        let ty = c.u32()?;
        let offset = c.u64()?;
        Ok(Self {
            name,
            dims,
            ty,
            offset,
        })
    }

    /// Checks type, size and range against the file and returns the tensor's place in it.
    fn locate(
        self,
        file: &Arc<MappedFile>,
        data_start: usize,
        alignment: usize,
    ) -> Result<TensorRef> {
        let data_len = file.bytes().len().saturating_sub(data_start);
        let bad = |msg: String| ModelError::Tensor {
            path: file.path().to_path_buf(),
            name: self.name.clone(),
            msg,
        };
        let (block_elems, block_bytes) = ggml_block_layout(self.ty)
            .ok_or_else(|| bad(format!("unknown tensor type id {}", self.ty)))?;
        let numel = self
            .dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= usize::MAX as u64 / 8)
            .ok_or_else(|| bad(format!("dimensions {:?} overflow", self.dims)))?
            as usize;
        if !(self.dims[0] as usize).is_multiple_of(block_elems) {
            return Err(bad(format!(
                "row length {} is not a multiple of the {} block size {block_elems}",
                self.dims[0],
                ggml_type_name(self.ty)
            )));
        }
        let size = numel / block_elems * block_bytes;
        if !self.offset.is_multiple_of(alignment as u64) {
            return Err(bad(format!(
                "data offset {} is not aligned to {alignment}",
                self.offset
            )));
        }
        if self
            .offset
            .checked_add(size as u64)
            .is_none_or(|e| e > data_len as u64)
        {
            return Err(bad(format!(
                "data [{}, +{size}) runs past the end of the file (tensor data is {data_len} bytes): truncated file?",
                self.offset
            )));
        }
        Ok(TensorRef {
            dtype: DType::from_ggml_id(self.ty).ok_or_else(|| ggml_type_name(self.ty).to_string()),
            shape: self.dims.iter().rev().map(|&d| d as usize).collect(),
            file: Arc::clone(file),
            start: data_start + self.offset as usize,
            len: size,
            name: self.name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_str(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }

    /// One tensor `w` of dims [256, 2] and the given ggml type, data zero-filled to `data` bytes.
    fn file_with(ty: u32, data: usize) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(2u32.to_le_bytes()); // version 2 is read like 3
        b.extend(1u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        put_str(&mut b, "general.alignment");
        b.extend(4u32.to_le_bytes());
        b.extend(64u32.to_le_bytes());
        put_str(&mut b, "w");
        b.extend(2u32.to_le_bytes());
        b.extend(256u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(ty.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        while !b.len().is_multiple_of(64) {
            b.push(0);
        }
        b.extend(vec![0u8; data]);
        b
    }

    fn parse(bytes: &[u8], name: &str) -> Result<GgufFile> {
        let p =
            std::env::temp_dir().join(format!("bora-gguf-unit-{}-{name}.gguf", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        let r = GgufFile::open(&p);
        let _ = std::fs::remove_file(&p);
        r
    }

    #[test]
    fn reads_v2_with_custom_alignment() {
        let g = parse(&file_with(8, 2 * 8 * 34), "q8").unwrap();
        assert_eq!(g.version, 2);
        let t = &g.tensors["w"];
        assert_eq!(t.shape, vec![2, 256]);
        assert_eq!(t.dtype, Ok(DType::Q8_0));
        assert_eq!(t.start % 64, 0);
    }

    #[test]
    fn known_but_unsupported_type_is_named_when_used() {
        // Q8_K (activations only): 256 elements in 292 bytes. The directory is valid; computing with it is not.
        let g = parse(&file_with(15, 2 * 292), "q4k").unwrap();
        let e = g.tensors["w"].dtype().unwrap_err().to_string();
        assert!(
            e.contains("'w'") && e.contains("Q8_K is not supported"),
            "{e}"
        );
        // One byte short of what Q8_K needs: the directory itself is rejected.
        let e = parse(&file_with(15, 2 * 292 - 1), "q4k_short")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("runs past the end"), "{e}");
    }
}
