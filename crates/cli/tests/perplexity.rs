//! `bora perplexity` against llama.cpp's llama-perplexity on the demo model
//! (tests/fixtures/smollm2/perplexity.json, tools/oracle/make_perplexity_reference.py):
//! the same windows and the same figure within 1 %, and KL divergence of a Q4_0 re-quantization
//! against the Q4_1 base as llama.cpp measures it.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn bora(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(args)
        .output()
        .expect("run bora");
    assert!(
        out.status.success(),
        "bora {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bora {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn text() -> String {
    fixtures()
        .join("text/botchan_ch1.txt")
        .display()
        .to_string()
}

fn reference() -> serde_json::Value {
    read_json(&fixtures().join("smollm2/perplexity.json"))
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// llama-perplexity ran with its defaults: an f16 KV cache and flash attention, whose CPU
/// kernel also rounds the queries to f16 and accumulates the weighted values in f16. bora's
/// f16 cache rounds K and V only, so neither of its cache types computes llama.cpp's exact
/// attention: measured, the f32 cache is within 1% of every running estimate, the f16 cache
/// within 1.2% (window 1: 23.00 vs 23.28; its 128 scored tokens make it the noisiest), and
/// both within 0.1% of the final estimate.
#[test]
fn perplexity_matches_llama_perplexity_within_one_percent() {
    let r = reference();
    let model = smollm2_path().display().to_string();
    let ctx = r["ctx"].as_u64().unwrap().to_string();
    for (kv, per_window) in [("f32", 0.01), ("f16", 0.015)] {
        let got = bora(&[
            "perplexity",
            &model,
            "-f",
            &text(),
            "--ctx",
            &ctx,
            "--kv-type",
            kv,
            "--json",
            "-q",
        ]);
        assert_eq!(got["chunks"], r["chunks"], "a different number of windows");
        let (ppl, want) = (
            got["perplexity"].as_f64().unwrap(),
            r["perplexity"].as_f64().unwrap(),
        );
        assert!(
            rel(ppl, want) < 0.01,
            "{kv} cache: PPL {ppl} vs llama.cpp {want}"
        );
        let se = got["stderr"].as_f64().unwrap();
        assert!(
            rel(se, r["stderr"].as_f64().unwrap()) < 0.05,
            "{kv} cache: stderr {se}"
        );
        // The running estimate after every window, too.
        let running: Vec<f64> = serde_json::from_value(got["running"].clone()).unwrap();
        let want_running: Vec<f64> = serde_json::from_value(r["running"].clone()).unwrap();
        assert_eq!(running.len(), want_running.len());
        for (i, (a, b)) in running.iter().zip(&want_running).enumerate() {
            assert!(
                rel(*a, *b) < per_window,
                "{kv} cache, window {}: {a} vs {b}",
                i + 1
            );
        }
    }
}

#[test]
fn kl_divergence_of_a_requantized_model_matches_llama_cpp() {
    let r = reference();
    let kl = &r["kl_q4_0_vs_q4_1"];
    let dir = std::env::temp_dir().join(format!("bora-kl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (base_file, q4_0) = (dir.join("base.bin"), dir.join("q4_0.gguf"));
    let s = |p: &Path| p.display().to_string();
    let model = s(&smollm2_path());
    let ctx = r["ctx"].as_u64().unwrap().to_string();
    let chunks = kl["chunks"].as_u64().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(["quantize", &model, &s(&q4_0), "--type", "q4_0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = bora(&[
        "perplexity",
        &model,
        "-f",
        &text(),
        "--ctx",
        &ctx,
        "--chunks",
        &chunks,
        "--save-logits",
        &s(&base_file),
        "--json",
        "-q",
    ]);
    // Against itself: nothing moved.
    let same = bora(&[
        "perplexity",
        &model,
        "--kl-divergence",
        &s(&base_file),
        "--json",
        "-q",
    ]);
    assert!(same["kld_mean"].as_f64().unwrap() < 1e-4, "{same}");
    assert!(same["same_top"].as_f64().unwrap() > 0.99, "{same}");
    assert!(
        rel(
            same["base_perplexity"].as_f64().unwrap(),
            base["perplexity"].as_f64().unwrap()
        ) < 1e-3
    );
    let got = bora(&[
        "perplexity",
        &s(&q4_0),
        "--kl-divergence",
        &s(&base_file),
        "--json",
        "-q",
    ]);
    std::fs::remove_dir_all(&dir).ok();
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    assert!(
        rel(f(&got["perplexity"]), f(&kl["ppl"])) < 0.01,
        "{got} vs {kl}"
    );
    assert!(
        rel(f(&got["base_perplexity"]), f(&kl["ppl_base"])) < 0.01,
        "{got} vs {kl}"
    );
    // bora and llama.cpp differ by ~0.001 nats on the same file; the Q4_0 shift is ~0.26 (the
    // tied token embedding is Q8_0 in a Q4_0 file, as llama-quantize writes it).
    assert!(
        rel(f(&got["kld_mean"]), f(&kl["kld_mean"])) < 0.05,
        "{got} vs {kl}"
    );
    let top = 100.0 * f(&got["same_top"]);
    assert!(
        (top - f(&kl["same_top_percent"])).abs() < 2.0,
        "same top {top} vs {kl}"
    );
}
