//! MMLU in its original layout (hendrycks/test `data/`): `dev/SUBJECT_dev.csv` holds the
//! few-shot examples, `test/SUBJECT_test.csv` the questions; rows are question, four
//! choices, answer letter, without a header. Prompts are lm-evaluation-harness's (and the
//! paper's): a line naming the subject, the first k dev questions with their answers, then
//! the question; the model's log-likelihood of " A" … " D" picks its answer.

use std::path::{Path, PathBuf};

use bora_engine::{BatchOptions, Tokenizer};
use bora_model::Model;

use super::{best, GroupScore, Metric, TaskReport};
use crate::error::{EvalError, Result};
use crate::loglik::{loglikelihoods, LoglikRequest};

pub const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

#[derive(Debug, Clone)]
pub struct Question {
    pub question: String,
    pub choices: [String; 4],
    /// 0..4
    pub answer: usize,
}

#[derive(Debug, Clone)]
pub struct Subject {
    /// As in the file names: `high_school_physics`.
    pub name: String,
    pub dev: Vec<Question>,
    pub test: Vec<Question>,
}

/// Reads one of the data set's CSV files.
pub fn read_csv(path: &Path) -> Result<Vec<Question>> {
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .map_err(|e| EvalError::data(path, e.to_string()))?;
    let mut out = Vec::new();
    for (i, rec) in rd.records().enumerate() {
        let rec = rec.map_err(|e| EvalError::data(path, e.to_string()))?;
        let bad = |msg: String| EvalError::data(path, format!("row {}: {msg}", i + 1));
        if rec.len() != 6 {
            return Err(bad(format!(
                "{} columns; expected 6 (question, A, B, C, D, answer)",
                rec.len()
            )));
        }
        let letter = rec[5].trim();
        let answer = LETTERS
            .iter()
            .position(|l| *l == letter)
            .ok_or_else(|| bad(format!("answer {letter:?} is not A, B, C or D")))?;
        out.push(Question {
            question: rec[0].to_string(),
            choices: [1, 2, 3, 4].map(|c| rec[c].to_string()),
            answer,
        });
    }
    Ok(out)
}

/// Every subject with a test file in `dir` (the data set's `data/` folder, or one holding
/// it), alphabetically.
pub fn load(dir: &Path) -> Result<Vec<Subject>> {
    let root: PathBuf = if dir.join("test").is_dir() {
        dir.to_path_buf()
    } else if dir.join("data").join("test").is_dir() {
        dir.join("data")
    } else {
        return Err(EvalError::data(
            dir,
            "no test/ folder: expected MMLU's data/ layout (dev/*_dev.csv, test/*_test.csv)",
        ));
    };
    let test_dir = root.join("test");
    let entries = std::fs::read_dir(&test_dir).map_err(|e| EvalError::io(&test_dir, e))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix("_test.csv"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(EvalError::data(&test_dir, "no SUBJECT_test.csv files"));
    }
    names
        .into_iter()
        .map(|name| {
            let dev_file = root.join("dev").join(format!("{name}_dev.csv"));
            let dev = if dev_file.exists() {
                read_csv(&dev_file)?
            } else {
                Vec::new()
            };
            let test = read_csv(&test_dir.join(format!("{name}_test.csv")))?;
            Ok(Subject { name, dev, test })
        })
        .collect()
}

/// The question as the prompt shows it, ending in "Answer:".
pub fn format_question(q: &Question) -> String {
    format!(
        "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
        q.question.trim(),
        q.choices[0],
        q.choices[1],
        q.choices[2],
        q.choices[3]
    )
}

/// The context for `q`: the subject line, `shots` solved dev questions, then `q`.
pub fn context(subject: &Subject, shots: usize, q: &Question) -> Result<String> {
    if shots > subject.dev.len() {
        return Err(EvalError::Invalid(format!(
            "{}: {shots} shots asked, the dev file has {}",
            subject.name,
            subject.dev.len()
        )));
    }
    let mut s = format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        subject.name.replace('_', " ")
    );
    for d in &subject.dev[..shots] {
        s.push_str(&format_question(d));
        s.push(' ');
        s.push_str(LETTERS[d.answer]);
        s.push_str("\n\n");
    }
    s.push_str(&format_question(q));
    Ok(s)
}

/// Scores the first `limit` test questions of every subject.
pub fn evaluate(
    model: &Model,
    tok: &Tokenizer,
    subjects: &[Subject],
    shots: usize,
    limit: Option<usize>,
    batch: BatchOptions,
    progress: impl FnMut(usize, usize),
) -> Result<TaskReport> {
    let mut asked: Vec<(usize, &Question)> = Vec::new();
    let mut requests = Vec::new();
    for (si, s) in subjects.iter().enumerate() {
        for q in s.test.iter().take(limit.unwrap_or(usize::MAX)) {
            let ctx = context(s, shots, q)?;
            for l in LETTERS {
                requests.push(LoglikRequest {
                    context: ctx.clone(),
                    continuation: format!(" {l}"),
                });
            }
            asked.push((si, q));
        }
    }
    let ll = loglikelihoods(model, tok, &requests, batch, progress)?;
    let mut hits = vec![(0usize, 0usize); subjects.len()];
    let mut items = Vec::with_capacity(asked.len());
    for (k, &(si, q)) in asked.iter().enumerate() {
        let scores: Vec<f64> = ll[4 * k..4 * k + 4].iter().map(|l| l.logprob).collect();
        let pick = best(scores.iter().copied());
        let right = pick == q.answer;
        hits[si].0 += usize::from(right);
        hits[si].1 += 1;
        items.push(serde_json::json!({
            "subject": subjects[si].name,
            "question": q.question,
            "answer": LETTERS[q.answer],
            "loglikelihoods": scores,
            "pick": LETTERS[pick],
            "correct": right,
        }));
    }
    let (h, n) = hits.iter().fold((0, 0), |(a, b), &(x, y)| (a + x, b + y));
    let groups = subjects
        .iter()
        .zip(&hits)
        .map(|(s, &(x, y))| GroupScore {
            name: s.name.clone(),
            n: y,
            acc: x as f64 / y.max(1) as f64,
        })
        .collect();
    Ok(TaskReport {
        task: "mmlu".into(),
        n,
        metrics: vec![Metric::share("acc", h, n)],
        groups,
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_is_the_subject_line_then_solved_shots_then_the_question() {
        let q = |t: &str, a| Question {
            question: format!(" {t} "),
            choices: ["1".into(), "2".into(), "3".into(), "4".into()],
            answer: a,
        };
        let s = Subject {
            name: "college_math".into(),
            dev: vec![q("1+1?", 1)],
            test: vec![q("2+2?", 3)],
        };
        let c = context(&s, 1, &s.test[0]).unwrap();
        assert_eq!(
            c,
            "The following are multiple choice questions (with answers) about college math.\n\n\
             1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n\
             2+2?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:"
        );
        assert!(context(&s, 2, &s.test[0]).is_err());
    }
}
