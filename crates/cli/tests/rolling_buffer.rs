//! The sliding window's rolling buffer: generating far past the window, a sequence holds only
//! about a window's worth of KV, counted in the cache's own memory.

mod common;

use bora::engine::{argmax, LoadOptions, Session};
use bora::model::LogitsRows;
use common::*;

fn run_far_past_window(window: usize, block: usize, tokens: usize) {
    let opts = LoadOptions {
        context_length: Some(tokens + 1),
        sliding_window: Some(Some(window)),
        ..Default::default()
    };
    let engine = bora::engine::load(&tiny("mistral_swa"), &opts).unwrap();
    // A pool sized for 4096-token chunks: room for ~270 blocks, so holding only a window's
    // worth is the recycling's doing, not the pool's limit.
    let mut s = Session::new(&engine.model, block, 4096).unwrap();
    let capacity = engine.model.blocks_per_sequence(block, 4096);
    assert!(capacity > 4 * (window.div_ceil(block) + 2));
    let max_blocks = window.div_ceil(block) + 1;
    let mut tok = 1u32;
    let mut peak_blocks = 0;
    for _ in 0..tokens {
        let logits = s.step(&[tok], LogitsRows::Last).unwrap();
        tok = argmax(&logits);
        peak_blocks = peak_blocks.max(s.blocks_held());
    }
    assert_eq!(s.len(), tokens);
    assert!(
        peak_blocks <= max_blocks,
        "held {peak_blocks} blocks, window allows {max_blocks}"
    );
    // The pool never grew past one step's need, far below its capacity: blocks are recycled.
    let pool = s.pool();
    assert!(
        pool.blocks_created() <= max_blocks + 1,
        "pool created {} blocks",
        pool.blocks_created()
    );
    let held_positions = pool.blocks_created() * block;
    assert!(
        held_positions <= window + 2 * block,
        "{held_positions} positions for a window of {window}"
    );
    // The cache's memory, counted by the pool: at most one block past the window's need.
    assert!(
        s.kv_bytes() <= (max_blocks + 1) * pool.block_bytes(),
        "{} bytes",
        s.kv_bytes()
    );
    let per_position = 2 * 4 * engine.model.config.n_layers * engine.model.config.kv_dim();
    assert!(s.kv_bytes() <= (window + 2 * block) * per_position);
}

#[test]
fn hundred_thousand_tokens_through_a_window_of_16() {
    run_far_past_window(16, 16, 100_000);
}

#[test]
fn window_of_256_holds_about_256_positions_after_5000_tokens() {
    run_far_past_window(256, 16, 5_000);
}

/// `bora chat` keeps the cache between turns and rewinds it to where a new turn's ids part
/// from the cached ones: the logits after a rewind and a different continuation equal those
/// of a fresh session on the whole sequence; under a window, a rewind past what the cache
/// still holds starts over, and that too gives the fresh logits.
#[test]
fn rewinding_the_cache_gives_a_fresh_sessions_logits() {
    for (model, rewind_to) in [
        ("mistral_nowin", 30usize),
        ("mistral_swa", 36),
        ("mistral_swa", 5),
    ] {
        let engine = load(&tiny(model));
        let m = &engine.model;
        let a: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 256).collect();
        let mut b = a[..rewind_to].to_vec();
        b.extend((0..12).map(|i| (i * 11 + 5) % 256));
        let mut s = bora::engine::Session::new(m, 4, 8).unwrap();
        s.prefill(&a, 8, bora::model::LogitsRows::Last).unwrap();
        let kept = s.rewind(rewind_to);
        assert!(kept == rewind_to || kept == 0, "{model}: kept {kept}");
        if model == "mistral_swa" && rewind_to == 5 {
            assert_eq!(kept, 0, "the window (16) dropped what position 5 needs");
        }
        let got = s
            .prefill(&b[kept..], 8, bora::model::LogitsRows::Last)
            .unwrap();
        let mut fresh = bora::engine::Session::new(m, 4, 8).unwrap();
        let want = fresh.prefill(&b, 8, bora::model::LogitsRows::Last).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-5, "{model} rewind to {rewind_to}: max |Δ| {d}");
    }
}
