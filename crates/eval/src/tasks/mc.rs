//! Any multiple-choice set, one JSON object per line:
//! `{"question": "...", "choices": ["...", ...], "answer": 0}` (answer: the right choice's
//! index). The prompt is "Question: …\nAnswer:" and each choice is scored as " choice";
//! `acc` takes the most likely choice, `acc_norm` the most likely per character, as
//! lm-evaluation-harness does.

use std::path::Path;

use bora_engine::{BatchOptions, Tokenizer};
use bora_model::Model;

use super::{best, read_jsonl, Metric, TaskReport};
use crate::error::{EvalError, Result};
use crate::loglik::{loglikelihoods, LoglikRequest};

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub question: String,
    pub choices: Vec<String>,
    pub answer: usize,
}

pub fn load(path: &Path) -> Result<Vec<Item>> {
    let items: Vec<Item> = read_jsonl(path)?;
    for (i, it) in items.iter().enumerate() {
        if it.choices.len() < 2 {
            return Err(EvalError::data(
                path,
                format!("item {}: fewer than two choices", i + 1),
            ));
        }
        if it.answer >= it.choices.len() {
            return Err(EvalError::data(
                path,
                format!(
                    "item {}: answer {} but only {} choices (answers count from 0)",
                    i + 1,
                    it.answer,
                    it.choices.len()
                ),
            ));
        }
    }
    Ok(items)
}

pub fn evaluate(
    model: &Model,
    tok: &Tokenizer,
    items: &[Item],
    batch: BatchOptions,
    progress: impl FnMut(usize, usize),
) -> Result<TaskReport> {
    let mut requests = Vec::new();
    for it in items {
        let ctx = format!("Question: {}\nAnswer:", it.question);
        for c in &it.choices {
            requests.push(LoglikRequest {
                context: ctx.clone(),
                continuation: format!(" {c}"),
            });
        }
    }
    let ll = loglikelihoods(model, tok, &requests, batch, progress)?;
    let (mut at, mut hits, mut hits_norm) = (0, 0, 0);
    let mut records = Vec::with_capacity(items.len());
    for it in items {
        let lls: Vec<f64> = ll[at..at + it.choices.len()]
            .iter()
            .map(|l| l.logprob)
            .collect();
        at += it.choices.len();
        let pick = best(lls.iter().copied());
        let pick_norm = best(
            lls.iter()
                .zip(&it.choices)
                .map(|(l, c)| l / c.chars().count().max(1) as f64),
        );
        hits += usize::from(pick == it.answer);
        hits_norm += usize::from(pick_norm == it.answer);
        records.push(serde_json::json!({
            "question": it.question,
            "answer": it.answer,
            "loglikelihoods": lls,
            "pick": pick,
            "pick_norm": pick_norm,
        }));
    }
    let n = items.len();
    Ok(TaskReport {
        task: "mc".into(),
        n,
        metrics: vec![
            Metric::share("acc", hits, n),
            Metric::share("acc_norm", hits_norm, n),
        ],
        groups: Vec::new(),
        items: records,
    })
}
