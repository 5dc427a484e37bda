//! `bora quantize` and `--quant`, against files and logits made by others:
//! - the tiny GGUFs the `gguf` package quantized (tools/oracle/convert_gguf.py): bora, from the
//!   F32 file, writes the same bytes for every tensor (ggml's reference quantizers);
//! - llama.cpp's logits on a k-quant file bora wrote: llama.cpp reads bora's blocks as bora does;
//! - transformers' logits on the Q8_0-rounded weights: quantizing at load gives them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bora::kernels::Activations;
use bora::model::gguf::GgufFile;
use common::*;

fn quantize(input: &Path, ty: &str, out_name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bora-quantize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(out_name);
    let o = Command::new(env!("CARGO_BIN_EXE_bora"))
        .args([
            "quantize",
            input.to_str().unwrap(),
            out.to_str().unwrap(),
            "--type",
            ty,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// (type, bytes) of every tensor, by name.
fn tensors(path: &Path) -> Vec<(String, String, Vec<u8>)> {
    let g = GgufFile::open(path).unwrap();
    g.tensors
        .values()
        .map(|t| {
            let ty = t.dtype().map(|d| d.to_string()).unwrap();
            (t.name.clone(), ty, t.bytes().to_vec())
        })
        .collect()
}

#[test]
fn legacy_types_are_written_as_the_gguf_package_writes_them() {
    let f32_file = tiny("mistral_swa.f32.gguf");
    let q8 = tensors(&tiny("mistral_swa.q8_0.gguf"));
    for ty in ["q8_0", "q4_0", "q4_1"] {
        let out = quantize(&f32_file, ty, &format!("swa.{ty}.gguf"));
        let want = tensors(&tiny(&format!("mistral_swa.{ty}.gguf")));
        let got = tensors(&out);
        assert_eq!(got.len(), want.len());
        for ((name, gt, gb), (wname, wt, wb)) in got.iter().zip(&want) {
            assert_eq!(name, wname);
            // llama.cpp's rule: output.weight gets Q6_K, which 64-wide rows can't hold, so it
            // falls back to Q8_0 (the fixture files used one type throughout).
            let (wt, wb) = if name == "output.weight" && ty != "q8_0" {
                let o = q8.iter().find(|t| &t.0 == name).unwrap();
                (&o.1, &o.2)
            } else {
                (wt, wb)
            };
            assert_eq!((gt, gb == wb), (wt, true), "{ty}: tensor {name}");
        }
        // And the file runs: transformers' logits on the gguf package's Q8_0 weights.
        if ty == "q8_0" {
            let r = read_json(&tiny("mistral_swa").join("reference.json"));
            let got = all_logits(&load(&out).model, &ids(&r["prompt_ids"]), 16);
            let want = read_f32(&tiny("mistral_swa.q8_0.logits.f32.bin"));
            assert!(max_abs_diff(&got, &want) <= 1e-4);
        }
    }
}

#[test]
fn llama_cpp_reads_bora_k_quants_as_bora_does() {
    let out = quantize(&tiny("mistral_k.q6_k.gguf"), "q4_k_m", "k.q4_k_m.gguf");
    // The committed copy (which llama.cpp ran) is what this build writes.
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(tiny("mistral_k.bora_q4_k_m.gguf")).unwrap(),
        "bora quantize no longer writes the file llama.cpp's logits were made from; \
         regenerate with tools/oracle/make_kquant_fixtures.py"
    );
    let types: Vec<String> = tensors(&out).into_iter().map(|t| t.1).collect();
    assert_eq!(types.iter().filter(|t| *t == "Q4_K").count(), 13);
    assert_eq!(types.iter().filter(|t| *t == "Q6_K").count(), 3);
    let prompt = ids(&read_json(&tiny("summary_kquants.json"))["prompt_ids"]);
    let want = read_f32(&tiny("mistral_k.bora_q4_k_m.llamacpp.f32.bin"));
    let got = all_logits(&load_with(&out, Activations::Q8).model, &prompt, 16);
    let close = got
        .chunks_exact(256)
        .zip(want.chunks_exact(256))
        .filter(|(a, b)| max_abs_diff(a, b) < 1e-4)
        .count();
    // As for llama.cpp's own files (kquant_gguf.rs): most positions to float noise, a few
    // moved by one flipped 8-bit rounding.
    assert!(close >= 32, "{close}/64 positions within 1e-4 of llama.cpp");
    assert!(max_abs_diff(&got, &want) < 0.5);
}

#[test]
fn quantizing_at_load_gives_the_rounded_weights_logits() {
    let r = read_json(&tiny("mistral_swa").join("reference.json"));
    let opts = bora::engine::LoadOptions {
        activations: Activations::F32,
        quant: Some(bora::kernels::DType::Q8_0),
        ..Default::default()
    };
    let e = bora::engine::load(&tiny("mistral_swa"), &opts).unwrap();
    assert_eq!(
        e.model.weights.layers[0].wq.dtype,
        bora::kernels::DType::Q8_0
    );
    let got = all_logits(&e.model, &ids(&r["prompt_ids"]), 16);
    let want = read_f32(&tiny("mistral_swa.q8_0.logits.f32.bin"));
    let d = max_abs_diff(&got, &want);
    assert!(d <= 1e-4, "max |Δlogit| {d}");
    // Quantized checkpoints are not quantized again.
    let opts = bora::engine::LoadOptions {
        quant: Some(bora::kernels::DType::Q4_0),
        ..Default::default()
    };
    let err = bora::engine::load(&tiny("mistral_swa.q8_0.gguf"), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("already quantized (Q8_0)"), "{err}");
}
