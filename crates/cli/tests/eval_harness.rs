//! `bora eval` against EleutherAI's lm-evaluation-harness (HF backend) on a tiny random
//! Mistral with the real v1 tokenizer (tests/fixtures/eval/, made by
//! tools/oracle/make_eval_fixtures.py): the same log-likelihood for every choice of every
//! item and so the same accuracy (MMLU, multiple choice), the same greedy text (GSM8K,
//! HumanEval prompts and stop strings), and batching that changes nothing.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bora::engine::{BatchOptions, Engine};
use bora::eval::tasks::sandbox::Outcome;
use bora::eval::tasks::{gsm8k, humaneval, mc, mmlu, TaskReport};
use common::*;

/// lm-eval computes in f32 with torch's kernels; 1e-3 nats is far below any gap that
/// decides an item (the fixture script warns of gaps under 1e-3; there are none).
const LL_TOL: f64 = 1e-3;

fn eval_dir() -> PathBuf {
    fixtures().join("eval")
}

fn engine() -> Engine {
    load(&eval_dir().join("tiny_mistral"))
}

fn reference(task: &str) -> serde_json::Value {
    read_json(&eval_dir().join("lm_eval_reference.json"))["tasks"][task].clone()
}

fn batch() -> BatchOptions {
    BatchOptions::default()
}

fn check_logliks(task: &str, items: &[serde_json::Value], want: &serde_json::Value) {
    let want = want["items"].as_array().unwrap();
    assert_eq!(items.len(), want.len(), "{task}: item count");
    for (i, (got, w)) in items.iter().zip(want).enumerate() {
        let g: Vec<f64> = serde_json::from_value(got["loglikelihoods"].clone()).unwrap();
        let w: Vec<f64> = serde_json::from_value(w["loglikelihoods"].clone()).unwrap();
        assert_eq!(g.len(), w.len());
        for (a, b) in g.iter().zip(&w) {
            assert!(
                (a - b).abs() < LL_TOL,
                "{task} item {i}: {g:?} vs lm-eval {w:?}"
            );
        }
    }
}

fn metric(r: &TaskReport, name: &str) -> f64 {
    r.metrics.iter().find(|m| m.name == name).unwrap().value
}

#[test]
fn mmlu_log_likelihoods_and_accuracy_equal_lm_eval() {
    let e = engine();
    let subjects = mmlu::load(&eval_dir().join("mmlu")).unwrap();
    assert_eq!(subjects.len(), 2);
    let r = mmlu::evaluate(
        &e.model,
        e.tokenizer().unwrap(),
        &subjects,
        2,
        None,
        batch(),
        |_, _| {},
    )
    .unwrap();
    for s in &subjects {
        let want = reference(&format!("mmlu_sample_{}", s.name));
        let items: Vec<_> = r
            .items
            .iter()
            .filter(|it| it["subject"] == s.name.as_str())
            .cloned()
            .collect();
        check_logliks(&s.name, &items, &want);
        let g = r.groups.iter().find(|g| g.name == s.name).unwrap();
        assert_eq!(
            g.acc,
            want["results"]["acc,none"].as_f64().unwrap(),
            "{}",
            s.name
        );
    }
    // Batching changes nothing: one sequence at a time, in 5-token steps.
    let one = BatchOptions {
        max_seqs: 1,
        step_tokens: 5,
        ..batch()
    };
    let r1 = mmlu::evaluate(
        &e.model,
        e.tokenizer().unwrap(),
        &subjects,
        2,
        None,
        one,
        |_, _| {},
    )
    .unwrap();
    for (a, b) in r.items.iter().zip(&r1.items) {
        let a: Vec<f64> = serde_json::from_value(a["loglikelihoods"].clone()).unwrap();
        let b: Vec<f64> = serde_json::from_value(b["loglikelihoods"].clone()).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4, "batched {a:?} vs alone {b:?}");
        }
    }
}

#[test]
fn multiple_choice_log_likelihoods_acc_and_acc_norm_equal_lm_eval() {
    let e = engine();
    let items = mc::load(&eval_dir().join("mc.jsonl")).unwrap();
    let r = mc::evaluate(&e.model, e.tokenizer().unwrap(), &items, batch(), |_, _| {}).unwrap();
    let want = reference("mc_sample");
    check_logliks("mc", &r.items, &want);
    assert_eq!(
        metric(&r, "acc"),
        want["results"]["acc,none"].as_f64().unwrap()
    );
    assert_eq!(
        metric(&r, "acc_norm"),
        want["results"]["acc_norm,none"].as_f64().unwrap()
    );
}

#[test]
fn gsm8k_generations_equal_lm_eval() {
    let e = engine();
    let shots = gsm8k::load(&eval_dir().join("gsm8k_train.jsonl")).unwrap();
    let problems = gsm8k::load(&eval_dir().join("gsm8k_test.jsonl")).unwrap();
    let r = gsm8k::evaluate(
        &e.model,
        e.tokenizer().unwrap(),
        &shots,
        &problems,
        32,
        batch(),
        |_, _| {},
    )
    .unwrap();
    let want = reference("gsm8k_sample");
    for (i, (got, w)) in r
        .items
        .iter()
        .zip(want["items"].as_array().unwrap())
        .enumerate()
    {
        assert_eq!(got["completion"], w["generation"], "problem {i}");
    }
    assert_eq!(
        metric(&r, "exact_match"),
        want["results"]["exact_match,none"].as_f64().unwrap()
    );
}

#[test]
fn humaneval_completions_equal_lm_eval_and_canonical_solutions_pass() {
    let e = engine();
    let problems = humaneval::load(&eval_dir().join("humaneval.jsonl")).unwrap();
    let r = humaneval::evaluate(
        &e.model,
        e.tokenizer().unwrap(),
        &problems,
        48,
        "python3",
        Duration::from_secs(10),
        batch(),
        |_, _| {},
    )
    .unwrap();
    let want = reference("humaneval_sample");
    for (i, (got, w)) in r
        .items
        .iter()
        .zip(want["items"].as_array().unwrap())
        .enumerate()
    {
        assert_eq!(got["completion"], w["generation"], "problem {i}");
    }
    // The sandbox's verdicts: every canonical solution passes, a wrong body fails.
    let canonical: Vec<String> = problems
        .iter()
        .map(|p| p.canonical_solution.clone())
        .collect();
    let outcomes =
        humaneval::check_all(&problems, &canonical, "python3", Duration::from_secs(10)).unwrap();
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Passed),
        "{outcomes:?}"
    );
    let wrong = vec!["    return None\n".to_string(); problems.len()];
    let outcomes =
        humaneval::check_all(&problems, &wrong, "python3", Duration::from_secs(10)).unwrap();
    assert!(
        outcomes.iter().all(|o| *o != Outcome::Passed),
        "{outcomes:?}"
    );
}

#[test]
fn eval_command_writes_results_and_refuses_to_run_code_unasked() {
    let model = eval_dir().join("tiny_mistral");
    let out_file = std::env::temp_dir().join(format!("bora-eval-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_bora"))
        .arg("eval")
        .arg(&model)
        .args(["--task", "mmlu", "--shots", "2", "--limit", "2", "--data"])
        .arg(eval_dir().join("mmlu"))
        .arg("--output")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| mmlu | 4 | acc |"), "{table}");
    assert!(table.contains("| astronomy | 2 |"), "{table}");
    let saved = read_json(&out_file);
    std::fs::remove_file(&out_file).ok();
    assert_eq!(saved["items"].as_array().unwrap().len(), 4);
    let out = Command::new(env!("CARGO_BIN_EXE_bora"))
        .arg("eval")
        .arg(&model)
        .args(["--task", "humaneval", "--data"])
        .arg(eval_dir().join("humaneval.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-code-execution"));
}
