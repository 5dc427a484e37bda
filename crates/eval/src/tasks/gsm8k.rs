//! GSM8K (openai/grade-school-math `test.jsonl`: `{"question", "answer"}`, the answer's
//! worked solution ending in "#### NUMBER"). Prompted as lm-evaluation-harness's `gsm8k`
//! task: solved examples "Question: …\nAnswer: <solution>" then the question; the model
//! writes its own chain of thought until "Question:", and the number after its "####" must
//! equal the reference exactly (commas, "$" and a final "." ignored).

use std::path::Path;

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
        if final_number(&p.answer).is_none() {
            return Err(EvalError::data(
                path,
                format!("item {}: the answer has no \"#### NUMBER\" line", i + 1),
            ));
        }
    }
    Ok(items)
}

/// The number after the first "#### ", normalized: commas and "$" dropped, a final "." cut.
pub fn final_number(text: &str) -> Option<String> {
    let at = text.find("#### ")? + 5;
    let raw: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '-' | '.' | ',' | '$'))
        .filter(|c| !matches!(c, ',' | '$'))
        .collect();
    let n = raw.strip_suffix('.').unwrap_or(&raw).to_string();
    n.chars().any(|c| c.is_ascii_digit()).then_some(n)
}

/// The last number in the text (the harness's "flexible" extraction), normalized likewise.
pub fn last_number(text: &str) -> Option<String> {
    let mut last = None;
    let mut cur = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() || matches!(c, '.' | ',' | '$') || (c == '-' && cur.is_empty()) {
            cur.push(c);
        } else if !cur.is_empty() {
            let n: String = cur.chars().filter(|c| !matches!(c, ',' | '$')).collect();
            let n = n.trim_end_matches('.').to_string();
            if n.chars().any(|c| c.is_ascii_digit()) {
                last = Some(n);
            }
            cur.clear();
        }
    }
    last
}

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
        let gold = final_number(&p.answer);
        let got = final_number(out);
        let loose = last_number(out);
        let s = got.is_some() && got == gold;
        let f = loose.is_some() && loose == gold;
        strict += usize::from(s);
        flexible += usize::from(f);
        items.push(serde_json::json!({
            "question": p.question,
            "reference": gold,
            "completion": out,
            "extracted": got,
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
    fn answers_are_read_after_the_four_hashes_and_normalized() {
        assert_eq!(
            final_number("so 3*4=12\n#### 1,200").as_deref(),
            Some("1200")
        );
        assert_eq!(final_number("#### $-7.").as_deref(), Some("-7"));
        assert_eq!(final_number("#### 3.5 apples").as_deref(), Some("3.5"));
        assert_eq!(final_number("The answer is 12"), None);
        assert_eq!(final_number("#### none"), None);
        assert_eq!(
            last_number("first 3, then $1,250.").as_deref(),
            Some("1250")
        );
        assert_eq!(last_number("no digits"), None);
    }
}
