//! Bad input gets one clear error naming the file, tensor or field, and a non-zero exit:
//! never a panic, an out-of-bounds read or a hang.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bad-input-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of a tiny fixture folder to corrupt.
fn copy_fixture(name: &str, to: &str) -> PathBuf {
    let dst = scratch(to);
    for e in std::fs::read_dir(tiny(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst
}

/// Runs bora and returns stderr, asserting it failed cleanly.
fn fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "bora {args:?} should have failed; stderr: {err}"
    );
    assert_eq!(out.status.code(), Some(1), "bora {args:?}: {err}");
    assert!(!err.contains("panicked"), "bora {args:?} panicked: {err}");
    assert!(err.lines().any(|l| l.starts_with("error: ")), "{err}");
    err
}

fn run_ids(model: &Path, ids: &str) -> String {
    fails(&[
        "run",
        model.to_str().unwrap(),
        "--ids",
        ids,
        "-n",
        "2",
        "--temp",
        "0",
    ])
}

#[test]
fn missing_model_is_named() {
    let e = run_ids(Path::new("/no/such/model.gguf"), "1");
    assert!(
        e.contains("/no/such/model.gguf") && e.contains("no such file"),
        "{e}"
    );
}

#[test]
fn truncated_safetensors() {
    let d = copy_fixture("mistral_swa", "trunc_st");
    let f = d.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = run_ids(&d, "1");
    assert!(
        e.contains("model.safetensors") && e.contains("fall outside"),
        "{e}"
    );
    std::fs::write(&f, &bytes[..5]).unwrap();
    let e = run_ids(&d, "1");
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn safetensors_with_lying_header() {
    let d = copy_fixture("mistral_swa", "lying_st");
    let f = d.join("model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&f, &bytes).unwrap();
    let e = run_ids(&d, "1");
    assert!(e.contains("header length"), "{e}");
    // A header that is not JSON.
    let mut bytes = std::fs::read(tiny("mistral_swa").join("model.safetensors")).unwrap();
    bytes[8] = b'#';
    std::fs::write(&f, &bytes).unwrap();
    let e = run_ids(&d, "1");
    assert!(e.contains("not valid JSON"), "{e}");
}

#[test]
fn unsupported_safetensors_dtype_names_the_tensor() {
    let d = copy_fixture("mistral_swa", "dtype_st");
    let f = d.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    // Same length, so offsets stay valid: q_proj of layer 0 becomes I32.
    let key = "\"model.layers.0.self_attn.q_proj.weight\":{\"dtype\":\"F32\"";
    assert!(header.contains(key), "fixture header layout changed");
    let patched = header.replace(key, &key.replace("F32", "I32"));
    let mut out = bytes.clone();
    out[8..8 + n].copy_from_slice(patched.as_bytes());
    std::fs::write(&f, out).unwrap();
    let e = run_ids(&d, "1");
    assert!(
        e.contains("model.layers.0.self_attn.q_proj.weight") && e.contains("I32 is not supported"),
        "{e}"
    );
}

#[test]
fn config_with_impossible_shapes() {
    let d = copy_fixture("mistral_swa", "bad_config");
    let cfg = d.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"),
    )
    .unwrap();
    let e = run_ids(&d, "1");
    assert!(
        e.contains("config.json") && e.contains("num_key_value_heads"),
        "{e}"
    );
    // A config that disagrees with the tensors: the tensor is named with both shapes.
    std::fs::write(
        &cfg,
        text.replace("\"intermediate_size\": 128", "\"intermediate_size\": 256"),
    )
    .unwrap();
    let e = run_ids(&d, "1");
    assert!(
        e.contains("mlp.gate_proj.weight") && e.contains("[128, 64]") && e.contains("[256, 64]"),
        "{e}"
    );
    std::fs::write(&cfg, "{\"model_type\": \"mistral\", ").unwrap();
    let e = run_ids(&d, "1");
    assert!(e.contains("not valid JSON"), "{e}");
}

#[test]
fn unsupported_architecture() {
    let d = copy_fixture("mistral_swa", "bad_arch");
    let cfg = d.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "\"model_type\": \"mistral\"",
            "\"model_type\": \"gpt_neox\"",
        ),
    )
    .unwrap();
    let e = run_ids(&d, "1");
    assert!(e.contains("unsupported architecture 'gpt_neox'"), "{e}");
}

#[test]
fn token_ids_out_of_range_and_malformed() {
    let m = tiny("mistral_swa");
    let e = run_ids(&m, "1,999");
    assert!(
        e.contains("token id 999 is out of range") && e.contains("256"),
        "{e}"
    );
    let e = run_ids(&m, "1,x");
    assert!(e.contains("'x' is not a token id"), "{e}");
}

#[test]
fn generating_past_the_context_limit() {
    let m = tiny("mistral_swa");
    let e = fails(&[
        "run",
        m.to_str().unwrap(),
        "--ids",
        "1,2,3",
        "-n",
        "5000",
        "--temp",
        "0",
    ]);
    assert!(e.contains("exceeds the context limit of 4096"), "{e}");
    let e = fails(&[
        "logits",
        m.to_str().unwrap(),
        "--ids",
        "1,2,3",
        "--ctx",
        "2",
    ]);
    assert!(e.contains("context limit of 2"), "{e}");
}

#[test]
fn no_tokenizer_with_text_prompt() {
    let e = fails(&["run", tiny("mistral_swa").to_str().unwrap(), "-p", "hello"]);
    assert!(e.contains("has no tokenizer") && e.contains("--ids"), "{e}");
}

// --- GGUF: files built here byte by byte, to lie in exactly one way each. ---

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

/// A GGUF v3 with `general.architecture = llama` and one F32 tensor `token_embd.weight`
/// whose declared dims, type and data length are given.
fn gguf(dims: &[u64], ty: u32, data_len: usize) -> Vec<u8> {
    gguf_with(dims, ty, data_len, "llama", &[])
}

/// Metadata value types as GGUF numbers them.
const GGUF_STRING: u32 = 8;
const GGUF_ARRAY: u32 = 9;
const GGUF_F32: u32 = 6;

/// As [`gguf`], with another architecture and extra metadata (key, type, encoded value).
fn gguf_with(
    dims: &[u64],
    ty: u32,
    data_len: usize,
    arch: &str,
    extra: &[(&str, u32, Vec<u8>)],
) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend((1 + extra.len() as u64).to_le_bytes()); // kv
    put_str(&mut b, "general.architecture");
    b.extend(GGUF_STRING.to_le_bytes());
    put_str(&mut b, arch);
    for (key, vtype, value) in extra {
        put_str(&mut b, key);
        b.extend(vtype.to_le_bytes());
        b.extend(value);
    }
    put_str(&mut b, "token_embd.weight");
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(ty.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend(vec![0u8; data_len]);
    b
}

fn write_gguf(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch(name).join("model.gguf");
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn gguf_bad_magic_and_version() {
    let mut b = gguf(&[4, 4], 0, 64);
    b[..4].copy_from_slice(b"GGML");
    let e = run_ids(&write_gguf("magic", &b), "1");
    assert!(e.contains("bad magic"), "{e}");
    let mut b = gguf(&[4, 4], 0, 64);
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    let e = run_ids(&write_gguf("version", &b), "1");
    assert!(e.contains("GGUF version 1 is not supported"), "{e}");
}

#[test]
fn gguf_truncated_anywhere_is_an_error() {
    let full = gguf(&[4, 4], 0, 64);
    for cut in [3, 10, 30, 60, 90, full.len() - 1] {
        let e = run_ids(&write_gguf(&format!("cut{cut}"), &full[..cut]), "1");
        assert!(
            e.contains("truncated") || e.contains("past the end") || e.contains("bad magic"),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn gguf_tensor_size_disagreeing_with_shape() {
    // 4×1000 f32 declared, 64 bytes present.
    let e = run_ids(&write_gguf("lying", &gguf(&[4, 1000], 0, 64)), "1");
    assert!(
        e.contains("token_embd.weight") && e.contains("runs past the end"),
        "{e}"
    );
    // Dimensions whose product overflows.
    let e = run_ids(
        &write_gguf("overflow", &gguf(&[u64::MAX / 2, 4], 0, 64)),
        "1",
    );
    assert!(e.contains("overflow"), "{e}");
}

#[test]
fn gguf_unknown_and_unsupported_tensor_types() {
    let e = run_ids(&write_gguf("unknown_type", &gguf(&[32, 2], 99, 4096)), "1");
    assert!(e.contains("unknown tensor type id 99"), "{e}");
}

#[test]
fn gguf_huge_counts_do_not_allocate() {
    let mut b = gguf(&[4, 4], 0, 64);
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = run_ids(&write_gguf("count", &b), "1");
    assert!(e.contains("larger than the file could hold"), "{e}");
}

#[test]
fn gguf_missing_metadata_is_named() {
    let e = run_ids(&write_gguf("nometa", &gguf(&[4, 4], 0, 64)), "1");
    assert!(
        e.contains("llama.embedding_length") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn empty_input_and_out_of_range_options() {
    let m = tiny("mistral_swa");
    let m = m.to_str().unwrap();
    let e = fails(&["run", m, "--ids", "1", "--block-size", "0"]);
    assert!(e.contains("--block-size"), "{e}");
    let e = fails(&[
        "run",
        m,
        "--ids",
        "1",
        "-n",
        "18446744073709551615",
        "--temp",
        "0",
    ]);
    assert!(e.contains("exceeds the context limit"), "{e}");
    let e = fails(&["run", m, "--ids", "1", "--top-p", "0"]);
    assert!(e.contains("top-p"), "{e}");
    let e = fails(&["run", m, "--ids", "", "-n", "1"]);
    assert!(e.contains("no token ids"), "{e}");
    let smol = std::env::var("BORA_SMOLLM2_GGUF").ok();
    if let Some(smol) = smol.filter(|p| Path::new(p).exists()) {
        // A tokenizer that adds no BOS: empty text is no tokens at all.
        let e = fails(&["logits", &smol, "--text", ""]);
        assert!(e.contains("the input is empty"), "{e}");
    }
}

#[test]
fn huge_chunk_is_clamped_not_overflowed() {
    let m = tiny("mistral_swa");
    let out = Command::new(env!("CARGO_BIN_EXE_bora"))
        .args([
            "logits",
            m.to_str().unwrap(),
            "--ids",
            "1,2,3",
            "--chunk",
            "18446744073709551615",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unsupported_features_are_refused_not_ignored() {
    let d = copy_fixture("mistral_swa", "features");
    let cfg = d.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\""),
    )
    .unwrap();
    let e = run_ids(&d, "1");
    assert!(e.contains("hidden_act") && e.contains("gelu"), "{e}");
    std::fs::write(
        &cfg,
        text.replace(
            "\"hidden_act\": \"silu\"",
            "\"hidden_act\": \"silu\", \"attention_bias\": true",
        ),
    )
    .unwrap();
    let e = run_ids(&d, "1");
    assert!(e.contains("attention_bias"), "{e}");
    std::fs::write(
        &cfg,
        text.replace("\"rope_type\": \"default\"", "\"rope_type\": \"yarn\""),
    )
    .unwrap();
    let e = run_ids(&d, "1");
    assert!(e.contains("RoPE scaling 'yarn'"), "{e}");
}

#[test]
fn gguf_duplicate_tensor_names() {
    // Two directory entries named token_embd.weight.
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    for offset in [0u64, 64] {
        put_str(&mut b, "token_embd.weight");
        b.extend(2u32.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(offset.to_le_bytes());
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend(vec![0u8; 128]);
    let e = run_ids(&write_gguf("dup", &b), "1");
    assert!(e.contains("appears twice"), "{e}");
}

#[test]
fn gguf_unsupported_architecture() {
    let e = run_ids(
        &write_gguf("arch", &gguf_with(&[4, 4], 0, 64, "gpt2", &[])),
        "1",
    );
    assert!(e.contains("unsupported architecture 'gpt2'"), "{e}");
}

/// A vocabulary whose scores array is shorter than its token list is refused, naming the key.
#[test]
fn gguf_vocabulary_with_mismatched_arrays() {
    let array = |ty: u32, items: &[Vec<u8>]| {
        let mut v = ty.to_le_bytes().to_vec();
        v.extend((items.len() as u64).to_le_bytes());
        items.iter().for_each(|i| v.extend(i));
        v
    };
    let s = |t: &str| {
        let mut v = (t.len() as u64).to_le_bytes().to_vec();
        v.extend(t.as_bytes());
        v
    };
    let model = s("llama");
    let tokens = array(GGUF_STRING, &[s("<unk>"), s("a"), s("b")]);
    let scores = array(
        GGUF_F32,
        &[0f32.to_le_bytes().to_vec(), 1f32.to_le_bytes().to_vec()],
    );
    let extra = [
        ("tokenizer.ggml.model", GGUF_STRING, model),
        ("tokenizer.ggml.tokens", GGUF_ARRAY, tokens),
        ("tokenizer.ggml.scores", GGUF_ARRAY, scores),
    ];
    let p = write_gguf("vocab", &gguf_with(&[4, 4], 0, 64, "llama", &extra));
    let e = fails(&["tokenize", p.to_str().unwrap(), "--text", "ab"]);
    assert!(
        e.contains("tokenizer.ggml.scores") && e.contains("2 entries for 3 tokens"),
        "{e}"
    );
}

fn eval_model() -> String {
    fixtures().join("eval/tiny_mistral").display().to_string()
}

#[test]
fn perplexity_refuses_short_texts_and_broken_base_files() {
    let d = scratch("ppl");
    let short = d.join("short.txt");
    std::fs::write(&short, "Only a few words.").unwrap();
    let e = fails(&[
        "perplexity",
        &eval_model(),
        "-f",
        short.to_str().unwrap(),
        "--ctx",
        "64",
    ]);
    assert!(e.contains("needs at least 128"), "{e}");
    // A saved base file cut short, and a file that is not one.
    let text = fixtures().join("text/botchan_ch1.txt");
    let base = d.join("base.bin");
    let out = Command::new(env!("CARGO_BIN_EXE_bora"))
        .args([
            "perplexity",
            &eval_model(),
            "--ctx",
            "32",
            "--chunks",
            "2",
            "-q",
            "--save-logits",
        ])
        .arg(&base)
        .arg("-f")
        .arg(&text)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&base).unwrap();
    std::fs::write(&base, &bytes[..bytes.len() - 100]).unwrap();
    let e = fails(&[
        "perplexity",
        &eval_model(),
        "--kl-divergence",
        base.to_str().unwrap(),
    ]);
    assert!(e.contains("base.bin") && e.contains("truncated"), "{e}");
    let e = fails(&[
        "perplexity",
        &eval_model(),
        "--kl-divergence",
        text.to_str().unwrap(),
    ]);
    assert!(e.contains("magic"), "{e}");
    // A base run of another vocabulary.
    std::fs::write(&base, &bytes).unwrap();
    let other = tiny("mistral_swa.f32.gguf");
    let e = fails(&[
        "perplexity",
        other.to_str().unwrap(),
        "--kl-divergence",
        base.to_str().unwrap(),
    ]);
    assert!(e.contains("vocabulary"), "{e}");
}

#[test]
fn eval_data_errors_name_the_file_and_the_row() {
    let d = scratch("eval");
    std::fs::create_dir_all(d.join("test")).unwrap();
    std::fs::write(d.join("test/physics_test.csv"), "What?,a,b,c,d,E\n").unwrap();
    let e = fails(&[
        "eval",
        &eval_model(),
        "--task",
        "mmlu",
        "--shots",
        "0",
        "--data",
        d.to_str().unwrap(),
    ]);
    assert!(
        e.contains("physics_test.csv") && e.contains("row 1") && e.contains("\"E\""),
        "{e}"
    );
    std::fs::write(d.join("test/physics_test.csv"), "What?,a,b,C\n").unwrap();
    let e = fails(&[
        "eval",
        &eval_model(),
        "--task",
        "mmlu",
        "--shots",
        "0",
        "--data",
        d.to_str().unwrap(),
    ]);
    assert!(e.contains("4 columns"), "{e}");
    std::fs::write(d.join("test/physics_test.csv"), "What?,a,b,c,d,A\n").unwrap();
    let e = fails(&[
        "eval",
        &eval_model(),
        "--task",
        "mmlu",
        "--data",
        d.to_str().unwrap(),
    ]);
    assert!(
        e.contains("physics: 5 shots asked, the dev file has 0"),
        "{e}"
    );
    let mc = d.join("mc.jsonl");
    std::fs::write(&mc, "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 0}\n{\"question\": \"q\", \"choices\": [\"a\"],\n").unwrap();
    let e = fails(&[
        "eval",
        &eval_model(),
        "--task",
        "mc",
        "--data",
        mc.to_str().unwrap(),
    ]);
    assert!(e.contains("mc.jsonl") && e.contains("line 2"), "{e}");
    std::fs::write(
        &mc,
        "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 2}\n",
    )
    .unwrap();
    let e = fails(&[
        "eval",
        &eval_model(),
        "--task",
        "mc",
        "--data",
        mc.to_str().unwrap(),
    ]);
    assert!(e.contains("answer 2"), "{e}");
    let g = d.join("gsm8k.jsonl");
    std::fs::write(&g, "{\"question\": \"1+1?\", \"answer\": \"2\"}\n").unwrap();
    let e = fails(&[
        "eval",
        &eval_model(),
        "--task",
        "gsm8k",
        "--data",
        g.to_str().unwrap(),
    ]);
    assert!(e.contains("####"), "{e}");
}

#[test]
fn native_layout_problems_are_named() {
    let d = copy_fixture("mistral_swa_native", "native");
    let params = d.join("params.json");
    let mut p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&params).unwrap()).unwrap();
    p["moe"] = serde_json::json!({"num_experts": 8, "num_experts_per_tok": 2});
    std::fs::write(&params, p.to_string()).unwrap();
    let e = run_ids(&d, "1");
    assert!(e.contains("params.json") && e.contains("moe"), "{e}");
    p.as_object_mut().unwrap().remove("moe");
    p.as_object_mut().unwrap().remove("dim");
    std::fs::write(&params, p.to_string()).unwrap();
    let e = run_ids(&d, "1");
    assert!(e.contains("dim"), "{e}");
    p["dim"] = serde_json::json!(64);
    std::fs::write(&params, p.to_string()).unwrap();
    std::fs::remove_file(d.join("consolidated.safetensors")).unwrap();
    let e = run_ids(&d, "1");
    assert!(e.contains("consolidated"), "{e}");
}
