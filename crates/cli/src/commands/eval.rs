//! `bora eval`: a benchmark task, batched through the engine, with a results table.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bora_engine::BatchOptions;
use bora_eval::tasks::{gsm8k, humaneval, mc, mmlu, TaskReport};

use super::progress::Progress;
use crate::args::{EvalArgs, EvalTask};

pub fn run(a: EvalArgs) -> Result<()> {
    if a.task == EvalTask::Humaneval && !a.allow_code_execution {
        bail!(
            "HumanEval runs the code the model writes: pass --allow-code-execution to allow it \
             (each program runs in a subprocess of its own, without network where unshare allows, with a {}s timeout)",
            a.timeout
        );
    }
    let timeout = Duration::try_from_secs_f64(a.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--timeout must be a positive number of seconds")?;
    let max_tokens = a.max_tokens.unwrap_or(match a.task {
        EvalTask::Humaneval => 1024,
        _ => 256,
    });
    if max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    if !a.data.exists() {
        bail!("{}: no such file or folder", a.data.display());
    }
    let engine = super::load(&a.model, false)?;
    let (model, tok) = (&engine.model, engine.tokenizer()?);
    let batch = BatchOptions {
        max_seqs: a.parallel.max(1),
        step_tokens: a.batch.max(1),
        ..Default::default()
    };
    let progress = Progress::new(&format!("{:?}", a.task).to_lowercase(), super::quiet());
    let tick = |done, total| progress.update(done, total);
    let limit = |n: usize| a.limit.unwrap_or(n).min(n);
    let report = match a.task {
        EvalTask::Mmlu => {
            let subjects = mmlu::load(&a.data)?;
            mmlu::evaluate(
                model,
                tok,
                &subjects,
                a.shots.unwrap_or(5),
                a.limit,
                batch,
                tick,
            )?
        }
        EvalTask::Mc => {
            let items = mc::load(&a.data)?;
            mc::evaluate(model, tok, &items[..limit(items.len())], batch, tick)?
        }
        EvalTask::Gsm8k => {
            let shots = a.shots.unwrap_or(8);
            let mut problems = gsm8k::load(&a.data)?;
            let examples = match &a.train {
                Some(t) => gsm8k::load(t)?,
                None => {
                    if shots >= problems.len() {
                        bail!(
                            "{} has {} problems: not enough to take {shots} as examples and score the rest (give --train FILE)",
                            a.data.display(),
                            problems.len()
                        );
                    }
                    problems.drain(..shots).collect()
                }
            };
            if examples.len() < shots {
                bail!(
                    "{shots} shots asked, the examples file has {}",
                    examples.len()
                );
            }
            let n = limit(problems.len());
            gsm8k::evaluate(
                model,
                tok,
                &examples[..shots],
                &problems[..n],
                max_tokens,
                batch,
                tick,
            )?
        }
        EvalTask::Humaneval => {
            let problems = humaneval::load(&a.data)?;
            let n = limit(problems.len());
            humaneval::evaluate(
                model,
                tok,
                &problems[..n],
                max_tokens,
                &a.python,
                timeout,
                batch,
                tick,
            )?
        }
    };
    progress.finish();
    print_table(&report)?;
    if let Some(path) = &a.output {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn print_table(r: &TaskReport) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "| task | n | metric | value | stderr |")?;
    writeln!(out, "|---|---:|---|---:|---:|")?;
    for m in &r.metrics {
        writeln!(
            out,
            "| {} | {} | {} | {:.4} | {:.4} |",
            r.task, r.n, m.name, m.value, m.stderr
        )?;
    }
    if !r.groups.is_empty() {
        writeln!(out)?;
        writeln!(out, "| subject | n | acc |")?;
        writeln!(out, "|---|---:|---:|")?;
        for g in &r.groups {
            writeln!(out, "| {} | {} | {:.4} |", g.name, g.n, g.acc)?;
        }
    }
    Ok(())
}
