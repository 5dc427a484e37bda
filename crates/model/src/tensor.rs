//! A tensor as found in a checkpoint: a typed, shaped byte range of a mapped file.

use std::sync::Arc;

use bora_kernels::quantize::{quantize_row, QuantizeError};
use bora_kernels::{DType, MatRef};
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::mmap::MappedFile;

/// A tensor in a checkpoint, before the model takes it. `shape` is row-major, outermost first
/// (numpy order) for both formats.
#[derive(Clone)]
pub struct TensorRef {
    pub name: String,
    /// The dtype, or the file's name for a dtype bora can't compute with.
    pub dtype: std::result::Result<DType, String>,
    pub shape: Vec<usize>,
    pub file: Arc<MappedFile>,
    pub start: usize,
    pub len: usize,
}

impl TensorRef {
    pub fn bytes(&self) -> &[u8] {
        &self.file.bytes()[self.start..self.start + self.len]
    }

    pub fn dtype(&self) -> Result<DType> {
        self.dtype.clone().map_err(|t| ModelError::Tensor {
            path: self.file.path().to_path_buf(),
            name: self.name.clone(),
            msg: format!("dtype {t} is not supported"),
        })
    }

    pub fn expect_shape(&self, expected: &[usize]) -> Result<()> {
        if self.shape != expected {
            return Err(ModelError::Shape {
                name: self.name.clone(),
                expected: expected.to_vec(),
                actual: self.shape.clone(),
            });
        }
        Ok(())
    }

    /// A 1-D tensor (a norm's weights) as f32.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let dtype = self.dtype()?;
        let n: usize = self.shape.iter().product();
        let mut out = vec![0f32; n];
        if dtype.row_bytes(n).ok() != Some(self.len) {
            return Err(ModelError::Tensor {
                path: self.file.path().to_path_buf(),
                name: self.name.clone(),
                msg: format!("{n} elements of {dtype} do not fill {} bytes", self.len),
            });
        }
        bora_kernels::dequantize_row(dtype, self.bytes(), &mut out);
        Ok(out)
    }
}

/// Where a weight's bytes live: in a mapped checkpoint (zero copy), or in memory when bora
/// quantized it at load.
#[derive(Clone)]
enum Storage {
    Mapped(Arc<MappedFile>),
    Owned(Arc<[u8]>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(f) => f.bytes(),
            Storage::Owned(b) => b,
        }
    }
}

/// A weight matrix the model computes with: `rows × cols` in its stored dtype.
#[derive(Clone)]
pub struct Weight {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    storage: Storage,
    start: usize,
    len: usize,
}

impl Weight {
    /// Takes a 2-D tensor (or a 3-D stack flattened to rows) checked to be `rows × cols`.
    pub fn from_tensor(t: &TensorRef, rows: usize, cols: usize) -> Result<Self> {
        let dtype = t.dtype()?;
        let fits = dtype
            .row_bytes(cols)
            .ok()
            .and_then(|rb| rb.checked_mul(rows))
            == Some(t.len);
        if !fits {
            return Err(ModelError::Tensor {
                path: t.file.path().to_path_buf(),
                name: t.name.clone(),
                msg: format!(
                    "{} bytes do not hold {rows}×{cols} elements of {dtype}",
                    t.len
                ),
            });
        }
        Ok(Self {
            dtype,
            rows,
            cols,
            storage: Storage::Mapped(Arc::clone(&t.file)),
            start: t.start,
            len: t.len,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.storage.bytes()[self.start..self.start + self.len]
    }

    pub fn mat(&self) -> MatRef<'_> {
        MatRef::new(self.dtype, self.rows, self.cols, self.bytes()).expect("shape checked at load")
    }

    /// Rows `[i·n, (i+1)·n)` as a weight of their own: one expert of a stacked tensor.
    pub fn slice_rows(&self, first: usize, n: usize) -> Self {
        let rb = self.len / self.rows;
        Self {
            rows: n,
            start: self.start + first * rb,
            len: n * rb,
            storage: self.storage.clone(),
            ..*self
        }
    }

    /// The same matrix stored as `target`: each row expanded to f32 and quantized, in parallel.
    pub fn quantized(&self, target: DType) -> std::result::Result<Self, QuantizeError> {
        let rb = target.row_bytes(self.cols)?;
        let mut out = vec![0u8; rb * self.rows];
        let m = self.mat();
        out.par_chunks_mut(rb).enumerate().try_for_each_init(
            || vec![0f32; self.cols],
            |row, (i, o)| {
                m.dequantize_row_into(i, row);
                quantize_row(target, row, o)
            },
        )?;
        Ok(Self {
            dtype: target,
            rows: self.rows,
            cols: self.cols,
            len: out.len(),
            storage: Storage::Owned(out.into()),
            start: 0,
        })
    }
}
