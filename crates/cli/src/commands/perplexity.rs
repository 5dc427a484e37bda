//! `bora perplexity`: llama-perplexity's measurement, and KL divergence against a base run.

use std::io::Write;

use anyhow::{bail, Context, Result};
use bora_engine::BatchOptions;
use bora_eval::kl::{KlAccumulator, KlReport};
use bora_eval::logits_file::{LogitsHeader, LogitsReader, LogitsWriter};
use bora_eval::perplexity::{perplexity, run_windows, Windows};

use super::progress::Progress;
use crate::args::PerplexityArgs;

/// llama-perplexity's default window.
const DEFAULT_CTX: usize = 512;

pub fn run(mut a: PerplexityArgs) -> Result<()> {
    let base = match &a.kl_divergence {
        Some(p) => Some(LogitsReader::open(p)?),
        None => None,
    };
    if let Some(b) = &base {
        let n = b.header.n_ctx;
        if a.model.ctx.is_some_and(|c| c != n) {
            bail!(
                "--ctx {} differs from the base file's window of {n}",
                a.model.ctx.unwrap_or(0)
            );
        }
        a.model.ctx = Some(n);
    }
    // The window is the context, as llama-perplexity's -c; the model loads with its own
    // limit, so a window past what it was trained on can be said.
    let ctx = a.model.ctx.take().unwrap_or(DEFAULT_CTX);
    let mut engine = super::load(&a.model, a.json)?;
    let trained = engine.model.config.max_context;
    if ctx > trained {
        eprintln!("bora: warning: a window of {ctx} tokens is longer than the model's context of {trained}");
    }
    engine.model.config.max_context = ctx;
    let model = &engine.model;
    let batch = a.batch.unwrap_or(ctx).max(1);
    let opts = BatchOptions {
        max_seqs: (batch / ctx).max(1),
        step_tokens: batch,
        ..Default::default()
    };
    let tok = engine.tokenizer()?;
    let bos = tok.add_bos.then_some(tok.bos).flatten();
    let progress = Progress::new("perplexity", super::quiet() || a.json);
    if let Some(mut base) = base {
        if base.header.n_vocab != model.config.vocab_size {
            bail!(
                "the base file's vocabulary has {} tokens, this model's {}: not the same model family",
                base.header.n_vocab,
                model.config.vocab_size
            );
        }
        let w = Windows {
            tokens: base.header.tokens.clone(),
            ctx,
            n_chunks: base.header.n_chunk,
            bos,
        };
        let vocab = model.config.vocab_size;
        let mut acc = KlAccumulator::default();
        run_windows(model, &w, opts, |i, rows| {
            for (row, &t) in rows.chunks_exact(vocab).zip(w.targets(i)) {
                acc.add(row, &base.next_row()?, t);
            }
            progress.update(i + 1, w.n_chunks);
            Ok(())
        })?;
        progress.finish();
        return print_kl(&acc.report(), a.json);
    }
    let file = a.file.as_ref().context("give the text with --file")?;
    let mut text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read {} as UTF-8 text", file.display()))?;
    // llama.cpp's -f drops one final newline; so do we, for the same tokens.
    if text.ends_with('\n') {
        text.pop();
    }
    let mut tokens = Vec::new();
    tokens.extend(bos);
    tokens.extend(tok.encode_plain(&text)?);
    let w = Windows::new(&tokens, ctx, bos, a.chunks)?;
    let mut saver = match &a.save_logits {
        Some(p) => Some(LogitsWriter::create(
            p,
            LogitsHeader {
                n_ctx: ctx,
                n_vocab: model.config.vocab_size,
                n_chunk: w.n_chunks,
                tokens: w.tokens.clone(),
            },
        )?),
        None => None,
    };
    if !a.json {
        progress.println(&format!(
            "perplexity: {} tokens, {} windows of {ctx}, scoring the last {} of each",
            tokens.len(),
            w.n_chunks,
            w.scored_per_chunk()
        ));
    }
    // The running estimate goes to stdout as each window completes, as llama-perplexity
    // prints it; while a progress bar is drawn it rides on the bar and is printed at the end.
    let streaming = !a.json && progress.is_hidden();
    let mut line = String::new();
    let mut write_error = None;
    let report = perplexity(model, &w, opts, saver.as_mut(), |i, ppl| {
        let item = format!("[{}]{ppl:.4},", i + 1);
        if streaming {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(item.as_bytes()).and_then(|_| out.flush()) {
                write_error.get_or_insert(e);
            }
        } else {
            progress.message(&format!("PPL {ppl:.4}"));
        }
        line.push_str(&item);
        progress.update(i + 1, w.n_chunks);
    })?;
    progress.finish();
    if let Some(e) = write_error {
        return Err(e.into());
    }
    if let Some(s) = saver {
        s.finish()?;
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        if streaming {
            writeln!(out)?;
        } else {
            writeln!(out, "{line}")?;
        }
        writeln!(
            out,
            "Final estimate: PPL = {:.4} +/- {:.5}",
            report.perplexity, report.stderr
        )?;
    }
    Ok(())
}

fn print_kl(r: &KlReport, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, r)?;
        writeln!(out)?;
        return Ok(());
    }
    let rows = [
        ("tokens", format!("{}", r.tokens)),
        (
            "PPL(this)",
            format!("{:.4} ± {:.4}", r.perplexity, r.perplexity_stderr),
        ),
        (
            "PPL(base)",
            format!("{:.4} ± {:.4}", r.base_perplexity, r.base_perplexity_stderr),
        ),
        ("ΔPPL", format!("{:+.4}", r.delta_perplexity)),
        ("PPL ratio", format!("{:.5}", r.perplexity_ratio)),
        (
            "mean KLD",
            format!("{:.6} ± {:.6}", r.kld_mean, r.kld_stderr),
        ),
        ("median KLD", format!("{:.6}", r.kld_median)),
        ("99% KLD", format!("{:.6}", r.kld_p99)),
        ("max KLD", format!("{:.6}", r.kld_max)),
        (
            "same top",
            format!(
                "{:.3} ± {:.3} %",
                100.0 * r.same_top,
                100.0 * r.same_top_stderr
            ),
        ),
        ("RMS Δp", format!("{:.3} %", 100.0 * r.delta_p_rms)),
    ];
    for (k, v) in rows {
        writeln!(out, "{k:<12} {v}")?;
    }
    Ok(())
}
