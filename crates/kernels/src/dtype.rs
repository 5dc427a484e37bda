//! Storage types of weights, as they appear in safetensors and GGUF files.

use std::fmt;

/// A weight's storage type. Quantized types are stored in fixed-size blocks along a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DTypeError {
    #[error("row of {cols} elements is not a multiple of the {dtype} block size {block}")]
    RaggedRow {
        dtype: DType,
        cols: usize,
        block: usize,
    },
}

impl DType {
    pub const ALL: [DType; 6] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
    ];

    /// Elements per block (1 for plain floats).
    pub const fn block_elems(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => 32,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => std::mem::size_of::<crate::blocks::BlockQ8_0>(),
            DType::Q4_0 => std::mem::size_of::<crate::blocks::BlockQ4_0>(),
            DType::Q4_1 => std::mem::size_of::<crate::blocks::BlockQ4_1>(),
        }
    }

    pub const fn is_quantized(self) -> bool {
        self.block_elems() > 1
    }

    /// Bytes taken by one row of `cols` elements, or an error if the row splits a block.
    pub fn row_bytes(self, cols: usize) -> Result<usize, DTypeError> {
        let block = self.block_elems();
        if !cols.is_multiple_of(block) {
            return Err(DTypeError::RaggedRow {
                dtype: self,
                cols,
                block,
            });
        }
        Ok(cols / block * self.block_bytes())
    }

    /// GGUF `ggml_type` id → dtype, for the types bora computes with.
    pub fn from_ggml_id(id: u32) -> Option<DType> {
        Some(match id {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            8 => DType::Q8_0,
            30 => DType::BF16,
            _ => return None,
        })
    }

    pub const fn ggml_id(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q8_0 => 8,
            DType::BF16 => 30,
        }
    }
}

/// The name llama.cpp gives a `ggml_type` id, for error messages about types bora can't run.
pub fn ggml_type_name(id: u32) -> &'static str {
    match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        _ => "unknown",
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q8_0 => "Q8_0",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_bytes_per_type() {
        assert_eq!(DType::F32.row_bytes(3), Ok(12));
        assert_eq!(DType::BF16.row_bytes(3), Ok(6));
        assert_eq!(DType::Q8_0.row_bytes(64), Ok(68));
        assert_eq!(DType::Q4_0.row_bytes(64), Ok(36));
        assert_eq!(DType::Q4_1.row_bytes(32), Ok(20));
        assert!(DType::Q4_0.row_bytes(33).is_err());
    }

    #[test]
    fn ggml_ids_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_ggml_id(d.ggml_id()), Some(d));
        }
        assert_eq!(DType::from_ggml_id(12), None);
        assert_eq!(ggml_type_name(12), "Q4_K");
    }
}
