//! `bora bench`: prompt-processing and generation speed, in the spirit of llama-bench.
//!
//! Each repetition is a fresh sequence: a `-p`-token prompt in one prefill (chunked as `run`
//! would), then `-n` tokens decoded one at a time (greedy). Token ids are fixed pseudo-random
//! ids, so no tokenizer is needed and runs are comparable; speed does not depend on them.

use std::path::Path;
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
                let next = argmax(&logits);
                s.step_into(&[next], LogitsRows::Last, &mut logits)?;
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
            "weights_huge_page_share": huge_page_share(&a.model.model),
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
    if let Some(share) = huge_page_share(&a.model.model) {
        println!(
            "\nweights mapped in 2 MiB pages: {:.0}% (4 KiB pages slow decode: BENCHMARKS.md)",
            share * 100.0
        );
    }
    Ok(())
}

/// Of the model's file pages this process has mapped, the share mapped with 2 MiB pages
/// (Linux `FilePmdMapped` over `Rss` of the maps of `model`, a file or a folder of them).
/// Whether the page cache holds a file in 2 MiB pages depends on how it was read or written
/// (bora's loader asks for them when it reads the file from disk), and it moves decode speed,
/// so the bench says it. `None` off Linux or when nothing is mapped.
fn huge_page_share(model: &Path) -> Option<f64> {
    let model = std::fs::canonicalize(model).ok()?;
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    huge_page_share_in(&smaps, &model)
}

/// [`huge_page_share`] from the text of an `smaps` file.
fn huge_page_share_in(smaps: &str, model: &Path) -> Option<f64> {
    let (mut pmd, mut rss, mut ours) = (0u64, 0u64, false);
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(key) = fields.next() else { continue };
        if key.contains('-') && !key.ends_with(':') {
            // A mapping's header: range, perms, offset, device, inode, then a file's path
            // (the only field with a '/', and it may hold spaces).
            ours = line
                .find(" /")
                .is_some_and(|at| Path::new(line[at + 1..].trim_end()).starts_with(model));
            continue;
        }
        let kib = fields
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        match key {
            "Rss:" if ours => rss += kib,
            "FilePmdMapped:" if ours => pmd += kib,
            _ => {}
        }
    }
    (rss > 0).then(|| pmd as f64 / rss as f64)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the model's own mappings count (a folder's files too), whatever else the
    /// process maps, and a mapping's header is told from its fields.
    #[test]
    fn huge_page_share_counts_the_model_mappings_only() {
        let smaps = "\
7f00000000-7f40000000 r--s 00000000 fe:00 11 /m/model.gguf
Size:            1048576 kB
Rss:              800000 kB
FilePmdMapped:    600000 kB
7f50000000-7f50200000 rw-p 00000000 00:00 0 
Rss:                2048 kB
AnonHugePages:      2048 kB
FilePmdMapped:         0 kB
7f60000000-7f60200000 r--p 00000000 fe:00 12 /usr/lib/libc.so.6
Rss:                2048 kB
FilePmdMapped:      2048 kB
7f70000000-7f70400000 r--s 00000000 fe:00 13                         /m/model-00002.safetensors
Rss:                 200000 kB
FilePmdMapped:            0 kB
7f80000000-7f80400000 r--s 00000000 fe:00 14 /m/my models/m.gguf
Rss:                  10000 kB
FilePmdMapped:         10000 kB
";
        let share = |p: &str| huge_page_share_in(smaps, Path::new(p));
        assert_eq!(share("/m/model.gguf"), Some(0.75));
        assert_eq!(share("/m/model-00002.safetensors"), Some(0.0));
        assert_eq!(share("/m/my models/m.gguf"), Some(1.0));
        assert_eq!(share("/m"), Some(610_000.0 / 1_010_000.0));
        assert_eq!(share("/elsewhere/model.gguf"), None);
    }
}
