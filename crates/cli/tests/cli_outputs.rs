//! The `bora` binary's machine-readable outputs, checked against the transformers and
//! sentencepiece references.

mod common;

use std::process::Command;

use common::*;

fn bora(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(args)
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "bora {args:?} failed: {se}");
    (so, se)
}

/// `logits --json` output → every row's logits, concatenated.
fn flat_logits(json: &[u8]) -> Vec<f32> {
    let j: serde_json::Value = serde_json::from_slice(json).unwrap();
    let rows = j["logits"].as_array().unwrap().iter();
    rows.flat_map(|r| {
        r.as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
    })
    .collect()
}

fn join(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// `bora run MODEL --ids PROMPT -n 40 --temp 0 --print-ids EXTRA…`: (stdout, stderr).
fn greedy_40_ids(dir: &std::path::Path, prompt: &[u32], extra: &[&str]) -> (String, String) {
    let ids = join(prompt);
    let mut args = vec![
        "run",
        dir.to_str().unwrap(),
        "--ids",
        &ids,
        "-n",
        "40",
        "--temp",
        "0",
        "--print-ids",
    ];
    args.extend(extra);
    bora(&args)
}

#[test]
fn run_print_ids_gives_the_greedy_continuation() {
    let dir = tiny("mistral_swa");
    let r = read_json(&dir.join("reference.json"));
    let prompt = ids(&r["greedy"]["prompt_ids"]);
    let want = ids(&r["greedy"]["generated_ids"]);
    let (out, err) = greedy_40_ids(&dir, &prompt, &["--ignore-eos"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let got: Vec<u32> = lines[0].split(' ').map(|t| t.parse().unwrap()).collect();
    assert_eq!(got, want[..40]);
    let last = err.lines().last().unwrap();
    assert!(
        last.contains("prompt: 8 tokens")
            && last.contains("generated: 40 tokens")
            && last.contains("tokens/s"),
        "{err}"
    );
    assert!(err.contains("sliding window 16"), "{err}");

    // Without --ignore-eos generation ends before the config's EOS (id 2), which isn't printed.
    let eos_at = want
        .iter()
        .position(|&t| t == 2)
        .expect("reference continuation contains EOS");
    let (out, err) = greedy_40_ids(&dir, &prompt, &[]);
    let got: Vec<u32> = out.split_whitespace().map(|t| t.parse().unwrap()).collect();
    assert_eq!(got, want[..eos_at]);
    assert!(err.contains("end of sequence"), "{err}");
}

#[test]
fn logits_json_last_and_all_positions() {
    let dir = tiny("mistral_swa");
    let r = read_json(&dir.join("reference.json"));
    let prompt = ids(&r["prompt_ids"]);
    let want = read_f32(&dir.join("logits.f32.bin"));
    let vocab = 256;
    let (out, _) = bora(&[
        "logits",
        dir.to_str().unwrap(),
        "--ids",
        &join(&prompt),
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = j["logits"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    let last: Vec<f32> = rows[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert!(max_abs_diff(&last, &want[(prompt.len() - 1) * vocab..]) <= 1e-4);
    let (out, _) = bora(&[
        "logits",
        dir.to_str().unwrap(),
        "--ids",
        &join(&prompt),
        "--all",
        "--json",
        "--chunk",
        "5",
    ]);
    let all = flat_logits(out.as_bytes());
    assert_eq!(all.len(), prompt.len() * vocab);
    assert!(max_abs_diff(&all, &want) <= 1e-4);
}

#[test]
fn tokenize_json_gives_ids_and_pieces() {
    let tok = fixtures().join("tokenizer_v1/tokenizer.json");
    let (out, _) = bora(&[
        "tokenize",
        tok.to_str().unwrap(),
        "--text",
        "Hello world",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let case = read_json(&fixtures().join("tokenizer_v1/cases.json"))
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["text"] == "Hello world")
        .cloned()
        .expect("cases.json has 'Hello world'");
    let mut want = vec![1u32]; // BOS: Mistral prompts start with <s>
    want.extend(ids(&case["ids"]));
    assert_eq!(ids(&j["ids"]), want);
    let pieces: Vec<&str> = j["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(pieces[0], "<s>");
    assert_eq!(pieces.len(), want.len());
    let (out, _) = bora(&[
        "tokenize",
        tok.to_str().unwrap(),
        "--text",
        "Hello world",
        "--json",
        "--no-bos",
    ]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ids(&j["ids"]), want[1..]);
}

/// `--sliding-window` overrides the file: with 0, attention is full, bora says so, and the
/// logits agree with transformers' windowed model only where the window did not matter yet
/// (positions < 16; the oracle notes transformers itself differs by ≥ 1.196 at every later one).
#[test]
fn sliding_window_override_on_gguf() {
    let file = tiny("mistral_swa.f32.gguf");
    let r = read_json(&tiny("mistral_swa").join("reference.json"));
    let prompt = ids(&r["prompt_ids"]);
    let want = read_f32(&tiny("mistral_swa").join("logits.f32.bin"));
    let vocab = 256;
    let run = |extra: &[&str]| {
        let mut args = vec!["logits", file.to_str().unwrap(), "--ids"];
        let joined = join(&prompt);
        args.push(&joined);
        args.extend(["--all", "--json", "--f32-activations"]);
        args.extend(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_bora"))
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success());
        (
            flat_logits(&out.stdout),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (windowed, _) = run(&[]);
    assert!(max_abs_diff(&windowed, &want) <= 1e-4);
    let (full, _) = run(&["--sliding-window", "0"]);
    assert!(max_abs_diff(&full[..16 * vocab], &want[..16 * vocab]) <= 1e-4);
    for p in 16..prompt.len() {
        let d = max_abs_diff(
            &full[p * vocab..(p + 1) * vocab],
            &want[p * vocab..(p + 1) * vocab],
        );
        assert!(
            d > 0.5,
            "position {p}: full attention should differ, Δ = {d}"
        );
    }
    // The message on stderr says which attention was used.
    let out = Command::new(env!("CARGO_BIN_EXE_bora"))
        .args([
            "run",
            file.to_str().unwrap(),
            "--ids",
            "1,2",
            "-n",
            "1",
            "--sliding-window",
            "0",
            "--print-ids",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("full attention (no sliding window)"));
    let nowin = tiny("mistral_nowin.f32.gguf");
    let out = Command::new(env!("CARGO_BIN_EXE_bora"))
        .args([
            "run",
            nowin.to_str().unwrap(),
            "--ids",
            "1,2",
            "-n",
            "1",
            "--print-ids",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("full attention (no sliding window)"));
}

/// `bench --json`: one object with the two medians, one measurement per repetition.
#[test]
fn bench_json_reports_medians_of_each_repetition() {
    let dir = tiny("mistral_swa");
    let (out, _) = bora(&[
        "bench",
        dir.to_str().unwrap(),
        "-p",
        "40",
        "-n",
        "8",
        "-r",
        "3",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    for (median, runs) in [
        ("prompt_tokens_per_s", "prompt_tokens_per_s_runs"),
        ("gen_tokens_per_s", "gen_tokens_per_s_runs"),
    ] {
        let runs: Vec<f64> = j[runs]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(runs.len(), 3);
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        assert_eq!(
            j[median].as_f64().unwrap(),
            sorted[1],
            "{median} is the median of {runs:?}"
        );
        assert!(sorted[0] > 0.0);
    }
    assert_eq!(
        (j["n_prompt"].as_u64(), j["n_gen"].as_u64()),
        (Some(40), Some(8))
    );
}

/// `bora inspect --json`: the parameter count the shapes in config.json imply, every byte of
/// the file's tensors accounted for by type, and the KV cache the window bounds.
#[test]
fn inspect_reports_parameters_types_and_memory() {
    for model in [
        tiny("mistral_swa"),
        tiny("mistral_swa.q8_0.gguf"),
        tiny("mistral_swa_native"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bora"))
            .arg("inspect")
            .arg(&model)
            .args(["--json", "--ctx", "100"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let cfg = read_json(&tiny("mistral_swa").join("config.json"));
        let n = |k: &str| cfg[k].as_u64().unwrap();
        let (v, h, i, l) = (
            n("vocab_size"),
            n("hidden_size"),
            n("intermediate_size"),
            n("num_hidden_layers"),
        );
        let (qd, kvd) = (
            n("num_attention_heads") * n("head_dim"),
            n("num_key_value_heads") * n("head_dim"),
        );
        let per_layer = h * qd * 2 + h * kvd * 2 + 3 * h * i + 2 * h;
        assert_eq!(
            j["parameters"].as_u64().unwrap(),
            2 * v * h + l * per_layer + h,
            "{model:?}"
        );
        let shares: f64 = j["tensor_types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["share"].as_f64().unwrap())
            .sum();
        assert!((shares - 1.0).abs() < 1e-9);
        assert_eq!(j["sliding_window"], 16);
        // 100 positions are fewer than the window plus one 512-token step, so all are held:
        // layers × (K, V) × kv_dim × element × 100, the element as a run would store it:
        // f16 for the quantized file, f32 for the float checkpoints.
        let (kv_type, bytes) = if model.to_string_lossy().contains("q8_0") {
            ("f16", 2)
        } else {
            ("f32", 4)
        };
        assert_eq!(j["memory"]["kv_cache_type"], kv_type, "{model:?}");
        assert_eq!(
            j["memory"]["kv_cache_bytes"].as_u64().unwrap(),
            l * 2 * kvd * bytes * 100
        );
    }
}
