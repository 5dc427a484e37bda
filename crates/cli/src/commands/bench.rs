//! `bora bench`: prompt-processing and generation speed, in the spirit of llama-bench.
//!
//! Each repetition is a fresh sequence: a `-p`-token prompt in one prefill (chunked as `run`
//! would), then `-n` tokens decoded one at a time (greedy). Token ids are fixed pseudo-random
//! ids, so no tokenizer is needed and runs are comparable; speed does not depend on them.

use std::time::Instant;

use anyhow::{bail, Result};
use bora_engine::{argmax, default_prefill_chunk, Session};
use bora_model::{LogitsRows, DEFAULT_BLOCK_SIZE};

use crate::args::BenchArgs;

pub fn run(a: BenchArgs) -> Result<()> {
    if a.reps == 0 || a.n_prompt == 0 {
        bail!("-p and -r must be at least 1");
    }
    let load_start = Instant::now();
    let engine = super::load(&a.model, a.json)?;
    let load_s = load_start.elapsed().as_secs_f64();
    let model = &engine.model;
    let limit = model.config.max_context;
    if a.n_prompt.saturating_add(a.n_gen) > limit {
        bail!(
            "-p {} plus -n {} exceeds the context limit of {limit} tokens",
            a.n_prompt,
            a.n_gen
        );
    }
    let vocab = model.config.vocab_size as u64;
    let prompt: Vec<u32> = (0..a.n_prompt as u64)
        .map(|i| ((i * 7919 + 13) % vocab) as u32)
        .collect();
    let chunk = a
        .model
        .chunk
        .unwrap_or_else(|| default_prefill_chunk(model));
    if !a.no_warmup {
        // Untimed: the first touch of every mmapped weight page costs a page fault, which
        // otherwise lands in the first repetition's prefill.
        let mut s = Session::new(model, DEFAULT_BLOCK_SIZE, chunk)?;
        let logits = s.prefill(&prompt[..a.n_prompt.min(32)], chunk, LogitsRows::Last)?;
        if a.n_gen > 0 {
            s.step(&[argmax(&logits)], LogitsRows::Last)?;
        }
    }
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for _ in 0..a.reps {
        let mut s = Session::new(model, DEFAULT_BLOCK_SIZE, chunk)?;
        let t0 = Instant::now();
        let mut logits = s.prefill(&prompt, chunk, LogitsRows::Last)?;
        pp.push(a.n_prompt as f64 / t0.elapsed().as_secs_f64());
        if a.n_gen > 0 {
            let t1 = Instant::now();
            for _ in 0..a.n_gen {
                logits = s.step(&[argmax(&logits)], LogitsRows::Last)?;
            }
            tg.push(a.n_gen as f64 / t1.elapsed().as_secs_f64());
        }
    }
    let (pp_med, pp_spread) = median_and_spread(&mut pp);
    let (tg_med, tg_spread) = median_and_spread(&mut tg);
    if a.json {
        let obj = serde_json::json!({
            "model": a.model.model.display().to_string(),
            "threads": rayon::current_num_threads(),
            "n_prompt": a.n_prompt,
            "n_gen": a.n_gen,
            "repetitions": a.reps,
            "prompt_tokens_per_s": pp_med,
            "gen_tokens_per_s": tg_med,
            "prompt_tokens_per_s_runs": pp,
            "gen_tokens_per_s_runs": tg,
            "load_seconds": load_s,
            "peak_rss_bytes": peak_rss_bytes(),
        });
        println!("{obj}");
        return Ok(());
    }
    println!(
        "| model | threads | test | tokens/s (median ± half-range of {} runs) |",
        a.reps
    );
    println!("|---|---|---|---|");
    let name = a
        .model
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let threads = rayon::current_num_threads();
    println!(
        "| {name} | {threads} | pp{} | {pp_med:.2} ± {pp_spread:.2} |",
        a.n_prompt
    );
    if a.n_gen > 0 {
        println!(
            "| {name} | {threads} | tg{} | {tg_med:.2} ± {tg_spread:.2} |",
            a.n_gen
        );
    }
    Ok(())
}

/// Median and half the range (0 for no values); sorts in place.
fn median_and_spread(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, (v[n - 1] - v[0]) / 2.0)
}

/// The process's peak resident set (Linux `VmHWM`), for memory targets; `None` elsewhere.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
