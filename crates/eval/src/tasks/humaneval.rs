//! HumanEval (openai/human-eval `HumanEval.jsonl`: task_id, prompt, canonical_solution, test,
//! entry_point). The model continues each prompt until a line starts a new top-level block
//! (the Codex paper's stop strings); the prompt, the completion and the problem's tests run
//! in the sandbox; pass@1 is the share that pass (one greedy sample each).

use std::path::Path;
use std::time::Duration;

use bora_engine::{BatchOptions, Tokenizer};
use bora_model::Model;

use super::sandbox::{run_python, Outcome};
use super::{read_jsonl, Metric, TaskReport};
use crate::error::Result;
use crate::generation::{generate_greedy, GenRequest};

pub const STOP: [&str; 5] = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Problem {
    pub task_id: String,
    pub prompt: String,
    #[serde(default)]
    pub canonical_solution: String,
    pub test: String,
    pub entry_point: String,
}

pub fn load(path: &Path) -> Result<Vec<Problem>> {
    read_jsonl(path)
}

/// The program that checks `completion`.
pub fn program(p: &Problem, completion: &str) -> String {
    format!(
        "{}{}\n\n{}\n\ncheck({})\n",
        p.prompt, completion, p.test, p.entry_point
    )
}

/// Runs the tests of every problem on its completion.
pub fn check_all(
    problems: &[Problem],
    completions: &[String],
    python: &str,
    timeout: Duration,
) -> Result<Vec<Outcome>> {
    problems
        .iter()
        .zip(completions)
        .map(|(p, c)| run_python(python, &program(p, c), timeout))
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &Model,
    tok: &Tokenizer,
    problems: &[Problem],
    max_new_tokens: usize,
    python: &str,
    timeout: Duration,
    batch: BatchOptions,
    progress: impl FnMut(usize, usize),
) -> Result<TaskReport> {
    let requests: Vec<GenRequest> = problems
        .iter()
        .map(|p| GenRequest {
            prompt: p.prompt.clone(),
            stop: STOP.map(String::from).to_vec(),
            max_new_tokens,
        })
        .collect();
    let completions = generate_greedy(model, tok, &requests, batch, progress)?;
    let outcomes = check_all(problems, &completions, python, timeout)?;
    let passed = outcomes.iter().filter(|o| **o == Outcome::Passed).count();
    let items = problems
        .iter()
        .zip(&completions)
        .zip(&outcomes)
        .map(
            |((p, c), o)| serde_json::json!({ "task_id": p.task_id, "completion": c, "result": o }),
        )
        .collect();
    Ok(TaskReport {
        task: "humaneval".into(),
        n: problems.len(),
        metrics: vec![Metric::share("pass@1", passed, problems.len())],
        groups: Vec::new(),
        items,
    })
}
