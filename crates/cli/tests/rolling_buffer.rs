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
