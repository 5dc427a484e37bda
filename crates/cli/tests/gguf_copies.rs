//! The tiny checkpoints converted to GGUF by tools/oracle/convert_gguf.py (the `gguf` package,
//! Q/K rows permuted as llama.cpp's converter does). The float copies must give transformers'
//! logits; each quantized copy must give the logits transformers computes from that file's
//! own dequantized weights (the `gguf` package's dequantizer), so they are held to the same
//! 1e-4: bora computes quantized weights exactly, with f32 activations.

mod common;

use common::*;

const TOL: f32 = 1e-4;

fn gguf(name: &str) -> std::path::PathBuf {
    tiny(name)
}

/// `file` against transformers' logits for `model`'s prompt; `logits` is the reference file.
fn check(file: &str, model: &str, logits: &std::path::Path) {
    let engine = load(&gguf(file));
    let r = read_json(&tiny(model).join("reference.json"));
    let prompt = ids(&r["prompt_ids"]);
    let want = read_f32(logits);
    for chunk in [1, 16, 64] {
        let got = all_logits(&engine.model, &prompt, chunk);
        let d = max_abs_diff(&got, &want);
        assert!(d <= TOL, "{file} chunk {chunk}: max |Δlogit| = {d}");
    }
}

fn check_float(file: &str, model: &str) {
    check(file, model, &tiny(model).join("logits.f32.bin"));
    let engine = load(&gguf(file));
    let g = &read_json(&tiny(model).join("reference.json"))["greedy"];
    let want = ids(&g["generated_ids"]);
    assert_eq!(
        greedy(&engine.model, &ids(&g["prompt_ids"]), want.len()),
        want,
        "{file} greedy"
    );
}

fn check_quant(model: &str, quant: &str) {
    let file = format!("{model}.{quant}.gguf");
    check(
        &file,
        model,
        &tiny(&format!("{model}.{quant}.logits.f32.bin")),
    );
    let greedy_ref = tiny(&format!("{model}.{quant}.greedy.json"));
    if greedy_ref.exists() {
        let g = read_json(&greedy_ref);
        let want = ids(&g["generated_ids"]);
        let engine = load(&gguf(&file));
        assert_eq!(
            greedy(&engine.model, &ids(&g["prompt_ids"]), want.len()),
            want,
            "{file} greedy"
        );
    }
}

#[test]
fn f32_gguf_matches_transformers() {
    check_float("mistral_swa.f32.gguf", "mistral_swa");
    check_float("mistral_nowin.f32.gguf", "mistral_nowin");
    check_float("llama_tied.f32.gguf", "llama_tied");
    check_float("mixtral.f32.gguf", "mixtral");
}

#[test]
fn f16_and_bf16_gguf_match_transformers() {
    check_float("mistral_swa.f16.gguf", "mistral_swa");
    check_float("mistral_swa.bf16.gguf", "mistral_swa");
}

#[test]
fn q8_0_gguf_matches_its_dequantized_weights() {
    check_quant("mistral_swa", "q8_0");
    check_quant("mixtral", "q8_0");
}

#[test]
fn q4_0_and_q4_1_gguf_match_their_dequantized_weights() {
    check_quant("mistral_swa", "q4_0");
    check_quant("mistral_swa", "q4_1");
}

/// Quantization moves the logits as far as its bits allow: Q8_0 stays far closer to the f32
/// model than Q4_0 or Q4_1 (these tiny random models amplify weight error strongly: measured
/// max |Δlogit| against f32 is 0.41 for Q8_0 and 6–8 for the 4-bit types).
#[test]
fn fewer_bits_move_the_logits_further() {
    let r = read_json(&tiny("mistral_swa").join("reference.json"));
    let want = read_f32(&tiny("mistral_swa").join("logits.f32.bin"));
    let err = |q: &str| {
        let e = load(&gguf(&format!("mistral_swa.{q}.gguf")));
        max_abs_diff(&all_logits(&e.model, &ids(&r["prompt_ids"]), 16), &want)
    };
    let (q8, q4_0, q4_1) = (err("q8_0"), err("q4_0"), err("q4_1"));
    assert!(q8 < 1.0, "Q8_0: {q8}");
    assert!(
        q8 * 4.0 < q4_0 && q8 * 4.0 < q4_1,
        "Q8_0 {q8}, Q4_0 {q4_0}, Q4_1 {q4_1}"
    );
}

/// llama.cpp's 8-bit activations change the result by the activation rounding only: on the
/// same quantized weights they stay close to the exact f32-activation product.
#[test]
fn q8_activations_stay_close_to_exact_activations() {
    let r = read_json(&tiny("mistral_swa").join("reference.json"));
    let prompt = ids(&r["prompt_ids"]);
    for q in ["q8_0", "q4_0", "q4_1"] {
        let file = gguf(&format!("mistral_swa.{q}.gguf"));
        let exact = all_logits(&load(&file).model, &prompt, 16);
        let q8 = all_logits(&load_llama_cpp_f32_kv(&file).model, &prompt, 16);
        let d = max_abs_diff(&exact, &q8);
        assert!(
            d > 0.0 && d < 0.5,
            "{q}: 8-bit activations moved logits by {d}"
        );
    }
}

/// The GGUF files say which window they were made with, and bora uses it.
#[test]
fn sliding_window_is_read_from_gguf_metadata() {
    assert_eq!(
        load(&gguf("mistral_swa.f32.gguf"))
            .model
            .config
            .sliding_window,
        Some(16)
    );
    assert_eq!(
        load(&gguf("mistral_nowin.f32.gguf"))
            .model
            .config
            .sliding_window,
        None
    );
    let m = load(&gguf("mixtral.f32.gguf")).model.config;
    assert_eq!(m.moe.map(|m| (m.n_experts, m.top_k)), Some((4, 2)));
}
