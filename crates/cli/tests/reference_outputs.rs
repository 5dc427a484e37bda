//! bora against HF transformers on tiny random-weight checkpoints (tests/fixtures/tiny, made by
//! tools/oracle/make_tiny_models.py): logits of every position, at every prefill chunk size,
//! and greedy continuations that wrap the sliding-window buffer many times.

mod common;

use common::*;

/// f32 compute against transformers' f32 eager attention.
const TOL: f32 = 1e-4;

fn check_logits(model_dir: &str, reference_dir: &str) {
    let engine = load(&tiny(model_dir));
    let r = read_json(&tiny(reference_dir).join("reference.json"));
    let prompt = ids(&r["prompt_ids"]);
    let want = read_f32(&tiny(reference_dir).join(r["logits_file"].as_str().unwrap()));
    for chunk in [1, 3, 16, 64] {
        let got = all_logits(&engine.model, &prompt, chunk);
        let d = max_abs_diff(&got, &want);
        assert!(d <= TOL, "{model_dir} chunk {chunk}: max |Δlogit| = {d}");
    }
}

fn check_greedy(model_dir: &str) {
    check_greedy_against(model_dir, model_dir);
}

fn check_greedy_against(model_dir: &str, reference_dir: &str) {
    let engine = load(&tiny(model_dir));
    let r = read_json(&tiny(reference_dir).join("reference.json"));
    let g = &r["greedy"];
    let prompt = ids(&g["prompt_ids"]);
    let want = ids(&g["generated_ids"]);
    let got = greedy(&engine.model, &prompt, want.len());
    assert_eq!(
        got, want,
        "{model_dir}: greedy continuation differs from transformers"
    );
}

#[test]
fn mistral_with_sliding_window_matches_transformers() {
    check_logits("mistral_swa", "mistral_swa");
    check_greedy("mistral_swa");
}

#[test]
fn bf16_and_f16_safetensors_match_transformers() {
    check_logits("mistral_swa_bf16", "mistral_swa");
    check_logits("mistral_swa_f16", "mistral_swa");
    check_greedy("mistral_swa_bf16");
}

/// Mistral's native layout (params.json, consolidated.safetensors, interleaved Q/K rows) of
/// the same weights (tools/oracle/make_native_fixture.py).
#[test]
fn mistral_native_layout_matches_transformers() {
    check_logits("mistral_swa_native", "mistral_swa");
    check_greedy_against("mistral_swa_native", "mistral_swa");
}

#[test]
fn mistral_without_window_sharded_explicit_head_dim_matches_transformers() {
    check_logits("mistral_nowin", "mistral_nowin");
    check_greedy("mistral_nowin");
}

#[test]
fn mixtral_top2_of_4_experts_matches_transformers() {
    check_logits("mixtral", "mixtral");
    check_greedy("mixtral");
}

#[test]
fn llama_with_tied_embeddings_matches_transformers() {
    check_logits("llama_tied", "llama_tied");
    check_greedy("llama_tied");
}

/// KV blocks that don't divide the window, and chunks longer than it, recycle correctly: every
/// block size × chunk size gives transformers' logits.
#[test]
fn block_sizes_and_chunks_that_straddle_the_window() {
    let engine = load(&tiny("mistral_swa"));
    let r = read_json(&tiny("mistral_swa").join("reference.json"));
    let prompt = ids(&r["prompt_ids"]);
    let want = read_f32(&tiny("mistral_swa").join("logits.f32.bin"));
    for block in [1, 5, 7, 16, 64] {
        for chunk in [1, 17, 64] {
            let mut s = bora::engine::Session::new(&engine.model, block, chunk).unwrap();
            let got = s
                .prefill(&prompt, chunk, bora::model::LogitsRows::All)
                .unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d <= TOL, "block {block} chunk {chunk}: {d}");
        }
    }
}

/// A step with no tokens is no work, not a panic.
#[test]
fn empty_step_returns_no_logits() {
    let engine = load(&tiny("mistral_swa"));
    let mut s = bora::engine::Session::new(&engine.model, 16, 16).unwrap();
    assert!(s
        .step(&[], bora::model::LogitsRows::All)
        .unwrap()
        .is_empty());
    assert_eq!(s.len(), 0);
}

/// Decoding token by token, prefilling at once and batched chunks all agree: the property that
/// makes chunked prefill safe, checked independently of any reference file.
#[test]
fn prefill_and_decode_agree_past_the_window() {
    let engine = load(&tiny("mistral_swa"));
    let prompt: Vec<u32> = (0..100u32).map(|i| (i * 37 + 11) % 256).collect();
    let one = all_logits(&engine.model, &prompt, 1);
    for chunk in [5, 16, 17, 100] {
        let d = max_abs_diff(&all_logits(&engine.model, &prompt, chunk), &one);
        assert!(d <= 1e-4, "chunk {chunk}: {d}");
    }
}
