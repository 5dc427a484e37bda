//! A decode step allocates a bounded number of times, whatever the model's depth: the kernels'
//! scratch (activation rows, their decode layout, attention's softmax state and widened cache
//! blocks) is kept per thread and reused, as issue #3 asks ("no allocation per token").
//!
//! The whole process's heap allocations are counted (the pool's worker threads allocate too),
//! so this file holds one test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bora_engine::{argmax, load, LoadOptions, Session};
use bora_model::LogitsRows;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name)
}

/// Allocations per decoded token, after warm-up, for a dense, a k-quant and a mixture file
/// (two layers each). The step's own bookkeeping allocates 13 times: the residual stream, the
/// rows' tokens, positions, cache slots and rope angles, the logits it picks, normalizes,
/// computes and returns, and the job that keeps the pool's other worker polling. A layer's
/// work must allocate nothing: one allocation per layer would add two here, one per KV head
/// and layer four, past the bound.
#[test]
fn decode_steps_allocate_a_bounded_number_of_times() {
    // Two threads, whatever the machine: the step spawns one polling job per other worker.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(count_decode_allocations);
}

fn count_decode_allocations() {
    for name in [
        "mistral_swa.q4_0.gguf",
        "mistral_k.q4_k_m.gguf",
        "mixtral.q8_0.gguf",
    ] {
        let opts = LoadOptions {
            no_tokenizer: true,
            ..Default::default()
        };
        let engine = load(&fixture(name), &opts).unwrap();
        let model = &engine.model;
        let layers = model.config.n_layers;
        let mut s = Session::new(model, 16, 64).unwrap();
        let mut logits = s.prefill(&[1, 5, 9, 13], 64, LogitsRows::Last).unwrap();
        // Warm-up: thread-local scratch grows to its size on the first steps.
        for _ in 0..8 {
            logits = s.step(&[argmax(&logits)], LogitsRows::Last).unwrap();
        }
        let steps = 16;
        let before = ALLOCATIONS.load(Relaxed);
        for _ in 0..steps {
            logits = s.step(&[argmax(&logits)], LogitsRows::Last).unwrap();
        }
        let per_step = (ALLOCATIONS.load(Relaxed) - before) as f64 / steps as f64;
        eprintln!("{name}: {per_step} allocations a step ({layers} layers)");
        assert!(
            per_step <= 14.0,
            "{name}: {per_step} allocations a decode step ({layers} layers)"
        );
    }
}
