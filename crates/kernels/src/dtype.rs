//! Storage types of weights, as they appear in safetensors and GGUF files.

use std::fmt;

/// A weight's storage type. Quantized types are stored in fixed-size blocks along a row.
#[allow(non_camel_case_types)] // ggml's names: Q4_K is not Q4K
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
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
    pub const ALL: [DType; 13] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ];

    /// Elements per block (1 for plain floats).
    pub const fn block_elems(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => 32,
            DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        use crate::blocks::*;
        use std::mem::size_of;
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => size_of::<BlockQ8_0>(),
            DType::Q4_0 => size_of::<BlockQ4_0>(),
            DType::Q4_1 => size_of::<BlockQ4_1>(),
            DType::Q5_0 => size_of::<BlockQ5_0>(),
            DType::Q5_1 => size_of::<BlockQ5_1>(),
            DType::Q2_K => size_of::<BlockQ2K>(),
            DType::Q3_K => size_of::<BlockQ3K>(),
            DType::Q4_K => size_of::<BlockQ4K>(),
            DType::Q5_K => size_of::<BlockQ5K>(),
            DType::Q6_K => size_of::<BlockQ6K>(),
        }
    }

    /// Whether this is a 256-weight super-block type (activations meet it as Q8_K).
    pub const fn is_k_quant(self) -> bool {
        self.block_elems() == crate::blocks::QK_K
    }

    /// Byte offsets of the f16 scale fields inside one block (tests and benchmarks fill them
    /// with sane values so random blocks decode to finite, modest weights).
    pub fn scale_fields(self) -> &'static [usize] {
        match self {
            DType::Q8_0 | DType::Q4_0 | DType::Q5_0 | DType::Q4_K | DType::Q5_K => {
                if self.is_k_quant() {
                    &[0, 2]
                } else {
                    &[0]
                }
            }
            DType::Q4_1 | DType::Q5_1 => &[0, 2],
            DType::Q2_K => &[80, 82],
            DType::Q3_K => &[108],
            DType::Q6_K => &[208],
            DType::F32 | DType::F16 | DType::BF16 => &[],
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
        DType::ALL.into_iter().find(|d| d.ggml_id() == id)
    }

    pub const fn ggml_id(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q2_K => 10,
            DType::Q3_K => 11,
            DType::Q4_K => 12,
            DType::Q5_K => 13,
            DType::Q6_K => 14,
            DType::BF16 => 30,
        }
    }
}

/// Every `ggml_type` id llama.cpp defines: its name, and where known the block layout
/// (elements per block, bytes per block), so a GGUF directory can be checked even for tensors
/// of types bora does not compute with.
/// (elements per block, bytes per block).
type BlockLayout = (usize, usize);
/// (ggml id, name, layout when known).
type GgmlType = (u32, &'static str, Option<BlockLayout>);

const GGML_TYPES: &[GgmlType] = &[
    (0, "F32", Some((1, 4))),
    (1, "F16", Some((1, 2))),
    (2, "Q4_0", Some((32, 18))),
    (3, "Q4_1", Some((32, 20))),
    (6, "Q5_0", Some((32, 22))),
    (7, "Q5_1", Some((32, 24))),
    (8, "Q8_0", Some((32, 34))),
    (9, "Q8_1", Some((32, 36))),
    (10, "Q2_K", Some((256, 84))),
    (11, "Q3_K", Some((256, 110))),
    (12, "Q4_K", Some((256, 144))),
    (13, "Q5_K", Some((256, 176))),
    (14, "Q6_K", Some((256, 210))),
    (15, "Q8_K", Some((256, 292))),
    (16, "IQ2_XXS", None),
    (17, "IQ2_XS", None),
    (18, "IQ3_XXS", None),
    (19, "IQ1_S", None),
    (20, "IQ4_NL", None),
    (21, "IQ3_S", None),
    (22, "IQ2_S", None),
    (23, "IQ4_XS", None),
    (24, "I8", Some((1, 1))),
    (25, "I16", Some((1, 2))),
    (26, "I32", Some((1, 4))),
    (27, "I64", Some((1, 8))),
    (28, "F64", Some((1, 8))),
    (29, "IQ1_M", None),
    (30, "BF16", Some((1, 2))),
];

fn ggml_entry(id: u32) -> Option<&'static GgmlType> {
    GGML_TYPES.iter().find(|e| e.0 == id)
}

/// The name llama.cpp gives a `ggml_type` id, for messages about types bora can't run.
pub fn ggml_type_name(id: u32) -> &'static str {
    ggml_entry(id).map_or("unknown", |e| e.1)
}

/// (elements per block, bytes per block) of a `ggml_type` id whose layout is known.
pub fn ggml_block_layout(id: u32) -> Option<BlockLayout> {
    ggml_entry(id).and_then(|e| e.2)
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ggml_type_name(self.ggml_id()))
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
        assert_eq!(DType::from_ggml_id(12), Some(DType::Q4_K));
        assert_eq!(DType::from_ggml_id(16), None);
        assert_eq!(ggml_type_name(12), "Q4_K");
        assert_eq!(DType::Q6_K.to_string(), "Q6_K");
        // The layout table agrees with the block structs bora computes with.
        for d in DType::ALL {
            assert_eq!(
                ggml_block_layout(d.ggml_id()),
                Some((d.block_elems(), d.block_bytes()))
            );
        }
    }
}
