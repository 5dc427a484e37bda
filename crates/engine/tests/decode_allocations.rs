//! A decode step allocates nothing, as issue #3 asks ("no allocation per token"): the step's
//! buffers are kept with the model, the kernels' scratch (activation rows, their decode
//! layout, attention's softmax state and widened cache blocks) per thread, and the logits go
//! into the caller's buffer. Only the KV cache grows, a block at a time.
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
/// (two layers each), with the logits kept in one buffer (`Session::step_into`): none, but
/// in the step that opens a KV block (every `BLOCK` positions), which allocates the block's K
/// and V storage and may grow the sequence's list of blocks (at most 3).
///
/// A pool worker's first share of some kind of work sets up that thread's buffers once (its
/// work-stealing handle, its attention scratch), and which steps a worker first joins is up
/// to the scheduler, so rounds of steps are run until one allocates nothing more (at most
/// `ROUNDS`). An allocation per token, per layer or per head shows up in every round and
/// fails the test.
#[test]
fn decode_steps_allocate_nothing_but_new_kv_blocks() {
    // Two threads, whatever the machine: the step keeps the pool's other worker polling.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(count_decode_allocations);
}

/// Positions per KV block here: small, so that the steps counted open several.
const BLOCK: usize = 4;
/// Decode steps a round, and the most rounds run.
const STEPS: usize = 8;
const ROUNDS: usize = 6;

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
        let mut s = Session::new(model, BLOCK, 64).unwrap();
        let mut logits = s.prefill(&[1, 5, 9, 13], 64, LogitsRows::Last).unwrap();
        // Warm-up: the step's and the threads' scratch grow to their size on the first steps.
        for _ in 0..8 {
            let next = argmax(&logits);
            s.step_into(&[next], LogitsRows::Last, &mut logits).unwrap();
        }
        let mut rounds = Vec::new();
        while rounds.len() < ROUNDS {
            // Allocations in steps inside a block, and the most in one that opened a block.
            let (mut inside, mut opening) = (0, 0);
            for _ in 0..STEPS {
                let pos = s.len();
                let next = argmax(&logits);
                let before = ALLOCATIONS.load(Relaxed);
                s.step_into(&[next], LogitsRows::Last, &mut logits).unwrap();
                let n = ALLOCATIONS.load(Relaxed) - before;
                if pos.is_multiple_of(BLOCK) {
                    opening = opening.max(n);
                } else {
                    inside += n;
                }
            }
            assert_eq!(logits.len(), model.config.vocab_size);
            rounds.push((inside, opening));
            if inside == 0 && opening <= 3 {
                break;
            }
        }
        eprintln!("{name}: (allocations inside blocks, most opening one) per round: {rounds:?}");
        let &(inside, opening) = rounds.last().unwrap();
        assert!(
            inside == 0 && opening <= 3,
            "{name}: {ROUNDS} rounds of {STEPS} decode steps all allocated: {rounds:?}"
        );
    }
}
