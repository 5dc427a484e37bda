//! Benchmark tasks: each reads its data set in the original layout, builds prompts the way
//! lm-evaluation-harness does, runs them batched, and scores.

pub mod gsm8k;
pub mod humaneval;
pub mod mc;
pub mod mmlu;
pub mod sandbox;

use std::path::Path;

use crate::error::{EvalError, Result};

/// The outcome of one task.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskReport {
    pub task: String,
    /// Items scored.
    pub n: usize,
    pub metrics: Vec<Metric>,
    /// Per-subject (MMLU) or other breakdowns.
    pub groups: Vec<GroupScore>,
    /// One record per item: what was asked, what the model did, whether it was right.
    pub items: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    /// Standard error of the mean over items.
    pub stderr: f64,
}

impl Metric {
    /// The mean of 0/1 outcomes, with its standard error.
    pub fn share(name: &str, hits: usize, n: usize) -> Self {
        let p = hits as f64 / n.max(1) as f64;
        Self {
            name: name.into(),
            value: p,
            stderr: if n > 1 {
                (p * (1.0 - p) / (n as f64 - 1.0)).sqrt()
            } else {
                0.0
            },
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupScore {
    pub name: String,
    pub n: usize,
    pub acc: f64,
}

/// Reads a JSON Lines file: one object per non-blank line, each parsed as `T`.
pub(crate) fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item = serde_json::from_str(line)
            .map_err(|e| EvalError::data(path, format!("line {}: {e}", i + 1)))?;
        out.push(item);
    }
    if out.is_empty() {
        return Err(EvalError::data(
            path,
            "no items (expected one JSON object per line)",
        ));
    }
    Ok(out)
}

/// Index of the largest value (the first on ties).
pub(crate) fn best(values: impl IntoIterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.into_iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}
