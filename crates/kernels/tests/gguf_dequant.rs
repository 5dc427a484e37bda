//! Every quant type's block decoding against the `gguf` package's (gguf.quants.dequantize) on
//! the same bytes: tests/fixtures/quants, written by tools/oracle/make_kquant_fixtures.py.

use bora_kernels::{dequantize_row, DType};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../tests/fixtures/quants/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A fixture of little-endian f32.
fn fixture_f32(name: &str) -> Vec<f32> {
    fixture(name)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn every_type_dequantizes_as_the_gguf_package_does() {
    for dtype in DType::ALL.into_iter().filter(|d| *d != DType::F32) {
        let raw = fixture(&format!("{dtype}.bin"));
        let want: Vec<f32> = fixture_f32(&format!("{dtype}.f32.bin"));
        assert_eq!(dtype.row_bytes(want.len()), Ok(raw.len()), "{dtype}");
        let mut got = vec![0f32; want.len()];
        dequantize_row(dtype, &raw, &mut got);
        // Same operations in the same order as numpy's float32 code: bit-exact.
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g == w, "{dtype} element {i}: bora {g} vs gguf {w}");
        }
    }
}

/// ggml's reference quantizers, as the `gguf` package reimplements them bit-exactly: bora
/// writes the same bytes for the same input.
#[test]
fn legacy_types_quantize_as_the_gguf_package_does() {
    let x: Vec<f32> = fixture_f32("quantize_input.f32.bin");
    for dtype in [
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
    ] {
        let want = fixture(&format!("{dtype}.quantized.bin"));
        let mut got = vec![0u8; dtype.row_bytes(x.len()).unwrap()];
        bora_kernels::quantize::quantize_row(dtype, &x, &mut got).unwrap();
        let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "{dtype}: first differing byte");
        assert_eq!(got.len(), want.len());
    }
}

/// The k-quants against ggml's own quantizer (`ggml_quantize_chunk` without an importance
/// matrix, tools/oracle/make_ggml_quantize_fixtures.py): the same bytes for 48 super-blocks
/// that reach every branch of its scale searches (all-zero, constant, one-signed, tiny, huge
/// and spiky groups among ordinary ones).
#[test]
fn k_quants_quantize_as_ggml_does() {
    let x: Vec<f32> = fixture_f32("kquant_input.f32.bin");
    for dtype in [
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ] {
        let want = fixture(&format!("{dtype}.quantized.bin"));
        let mut got = vec![0u8; dtype.row_bytes(x.len()).unwrap()];
        bora_kernels::quantize::quantize_row(dtype, &x, &mut got).unwrap();
        assert_eq!(got.len(), want.len());
        let differing: Vec<usize> = got
            .chunks_exact(dtype.block_bytes())
            .zip(want.chunks_exact(dtype.block_bytes()))
            .enumerate()
            .filter(|(_, (g, w))| g != w)
            .map(|(i, _)| i)
            .collect();
        assert!(
            differing.is_empty(),
            "{dtype}: blocks {differing:?} differ from ggml's"
        );
    }
}
