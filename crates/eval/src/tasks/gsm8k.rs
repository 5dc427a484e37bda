//! GSM8K (openai/grade-school-math `test.jsonl`: `{"question", "answer"}`, the answer's
//! worked solution ending in "#### NUMBER"). Prompted as lm-evaluation-harness's `gsm8k`
//! task: solved examples "Question: …\nAnswer: <solution>" then the question; the model
//! writes its own chain of thought until "Question:", and the number after its "####" must
//! equal the reference exactly, extracted and normalized with lm-eval's own patterns.

use std::path::Path;
use std::sync::OnceLock;

use regex::Regex;

use bora_engine::{BatchOptions, Tokenizer};
use bora_model::Model;

use super::{read_jsonl, Metric, TaskReport};
use crate::error::{EvalError, Result};
use crate::generation::{generate_greedy, GenRequest};

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Problem {
    pub question: String,
    pub answer: String,
}

pub fn load(path: &Path) -> Result<Vec<Problem>> {
    let items: Vec<Problem> = read_jsonl(path)?;
    for (i, p) in items.iter().enumerate() {
        if !p.answer.contains("#### ") {
            return Err(EvalError::data(
                path,
                format!("item {}: the answer has no \"#### NUMBER\" line", i + 1),
            ));
        }
    }
    Ok(items)
}

/// What lm-eval's "strict-match" filter extracts: the first `#### (-?[0-9.,]+)`'s number,
/// or "[invalid]".
pub fn strict_answer(text: &str) -> String {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"#### (\-?[0-9\.\,]+)").expect("valid pattern"));
    re.captures(text)
        .and_then(|c| c.get(1))
        .map_or(INVALID.to_string(), |m| m.as_str().trim().to_string())
}

/// What its "flexible-extract" filter takes: the last number-like run in the text.
pub fn flexible_answer(text: &str) -> String {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)").expect("valid pattern"));
    re.captures_iter(text)
        .last()
        .and_then(|c| c.get(1).or_else(|| c.get(2)))
        .map_or(INVALID.to_string(), |m| m.as_str().trim().to_string())
}

/// lm-eval's exact_match normalization for GSM8K, on both sides: commas and "$" removed,
/// everything through the last "#### " removed, one final "." removed, lowercased.
pub fn normalize(s: &str) -> String {
    let mut t: String = s.chars().filter(|&c| c != ',' && c != '$').collect();
    if let Some(at) = t.rfind("#### ") {
        t.drain(..at + 5);
    }
    // Python's `\.$` also matches before a final newline.
    if t.ends_with(".\n") {
        t.remove(t.len() - 2);
    } else if t.ends_with('.') {
        t.pop();
    }
    t.to_lowercase()
}

const INVALID: &str = "[invalid]";

pub fn prompt(shots: &[Problem], p: &Problem) -> String {
    let mut s = String::new();
    for e in shots {
        s.push_str(&format!(
            "Question: {}\nAnswer: {}\n\n",
            e.question, e.answer
        ));
    }
    s.push_str(&format!("Question: {}\nAnswer:", p.question));
    s
}

/// Solves `problems` with `shots` solved examples before each.
pub fn evaluate(
    model: &Model,
    tok: &Tokenizer,
    shots: &[Problem],
    problems: &[Problem],
    max_new_tokens: usize,
    batch: BatchOptions,
    progress: impl FnMut(usize, usize),
) -> Result<TaskReport> {
    let stop: Vec<String> = ["Question:", "</s>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let requests: Vec<GenRequest> = problems
        .iter()
        .map(|p| GenRequest {
            prompt: prompt(shots, p),
            stop: stop.clone(),
            max_new_tokens,
        })
        .collect();
    let outs = generate_greedy(model, tok, &requests, batch, progress)?;
    let (mut strict, mut flexible) = (0, 0);
    let mut items = Vec::with_capacity(problems.len());
    for (p, out) in problems.iter().zip(&outs) {
        let gold = normalize(&p.answer);
        let (got, loose) = (strict_answer(out), flexible_answer(out));
        let s = normalize(&got) == gold;
        let f = normalize(&loose) == gold;
        strict += usize::from(s);
        flexible += usize::from(f);
        items.push(serde_json::json!({
            "question": p.question,
            "reference": gold,
            "completion": out,
            "extracted": got,
            "extracted_flexible": loose,
            "correct": s,
            "correct_flexible": f,
        }));
    }
    let n = problems.len();
    Ok(TaskReport {
        task: "gsm8k".into(),
        n,
        metrics: vec![
            Metric::share("exact_match", strict, n),
            Metric::share("exact_match_flexible", flexible, n),
        ],
        groups: Vec::new(),
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_extracted_and_normalized_as_lm_eval_does() {
        assert_eq!(strict_answer("so 3*4=12\n#### 1,200"), "1,200");
        assert_eq!(normalize(&strict_answer("#### 1,200.")), "1200");
        assert_eq!(normalize("Natalia sold 48/2 = 24 clips.\n#### 72"), "72");
        // lm-eval's strict pattern has no "$": a "$" answer is invalid there, and here.
        assert_eq!(strict_answer("#### $18"), INVALID);
        assert_eq!(strict_answer("The answer is 12"), INVALID);
        assert_eq!(flexible_answer("first 3, then $1,250."), "$1,250.");
        assert_eq!(normalize(&flexible_answer("first 3, then $1,250.")), "1250");
        assert_eq!(flexible_answer("5-3"), "-3");
        assert_eq!(flexible_answer("no digits"), INVALID);
    }
}
