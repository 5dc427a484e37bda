//! `bora quantize` and `--quant`, against files and logits made by others:
//! - the tiny GGUFs the `gguf` package quantized (tools/oracle/convert_gguf.py): bora, from the
//!   F32 file, writes the same bytes for every tensor (ggml's reference quantizers);
//! - llama.cpp's llama_model_quantize of a k-quant file: bora writes the same tensors, byte for
//!   byte, and computes llama.cpp's logits on them;
//! - transformers' logits on the Q8_0-rounded weights: quantizing at load gives them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bora::kernels::Activations;
use bora::model::gguf::GgufFile;
use common::*;

fn quantize(input: &Path, ty: &str, out_name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("quantize");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(out_name);
    let o = Command::new(env!("CARGO_BIN_EXE_bora"))
        .args([
            "quantize",
            input.to_str().unwrap(),
            out.to_str().unwrap(),
            "--type",
            ty,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// (type, bytes) of every tensor, by name.
fn tensors(path: &Path) -> Vec<(String, String, Vec<u8>)> {
    let g = GgufFile::open(path).unwrap();
    g.tensors
        .values()
        .map(|t| {
            let ty = t.dtype().map(|d| d.to_string()).unwrap();
            (t.name.clone(), ty, t.bytes().to_vec())
        })
        .collect()
}

#[test]
fn legacy_types_are_written_as_the_gguf_package_writes_them() {
    let f32_file = tiny("mistral_swa.f32.gguf");
    let q8 = tensors(&tiny("mistral_swa.q8_0.gguf"));
    for ty in ["q8_0", "q4_0", "q4_1"] {
        let out = quantize(&f32_file, ty, &format!("swa.{ty}.gguf"));
        let want = tensors(&tiny(&format!("mistral_swa.{ty}.gguf")));
        let got = tensors(&out);
        assert_eq!(got.len(), want.len());
        for ((name, gt, gb), (wname, wt, wb)) in got.iter().zip(&want) {
            assert_eq!(name, wname);
            // llama.cpp's rule: output.weight gets Q6_K, which 64-wide rows can't hold, so it
            // falls back to Q8_0 (the fixture files used one type throughout).
            let (wt, wb) = if name == "output.weight" && ty != "q8_0" {
                let o = q8.iter().find(|t| &t.0 == name).unwrap();
                (&o.1, &o.2)
            } else {
                (wt, wb)
            };
            assert_eq!((gt, gb == wb), (wt, true), "{ty}: tensor {name}");
        }
        // And the file runs: transformers' logits on the gguf package's Q8_0 weights.
        if ty == "q8_0" {
            let r = read_json(&tiny("mistral_swa").join("reference.json"));
            let got = all_logits(&load(&out).model, &ids(&r["prompt_ids"]), 16);
            let want = read_f32(&tiny("mistral_swa.q8_0.logits.f32.bin"));
            assert!(max_abs_diff(&got, &want) <= 1e-4);
        }
    }
}

/// `bora quantize` of the Q6_K tiny model to Q4_K_M and Q5_K_M against llama.cpp's
/// llama_model_quantize of the same file (tools/oracle/make_ggml_quantize_fixtures.py): every
/// tensor in llama.cpp's type with llama.cpp's bytes, and bora's logits on its file near
/// llama.cpp's on llama.cpp's.
#[test]
fn k_quant_files_are_written_as_llama_quantize_writes_them() {
    let prompt = ids(&read_json(&tiny("summary_kquants.json"))["prompt_ids"]);
    for ty in ["q4_k_m", "q5_k_m"] {
        let out = quantize(&tiny("mistral_k.q6_k.gguf"), ty, &format!("k.{ty}.gguf"));
        let mut got = tensors(&out);
        let mut want = tensors(&tiny(&format!("mistral_k.requant_{ty}.gguf")));
        got.sort();
        want.sort();
        assert_eq!(got.len(), want.len(), "{ty}: tensor count");
        for ((name, gt, gb), (wname, wt, wb)) in got.iter().zip(&want) {
            assert_eq!((name, gt), (wname, wt), "{ty}: tensor types");
            assert!(
                gb == wb,
                "{ty}: {name} ({gt}) differs from llama.cpp's bytes"
            );
        }
        let want = read_f32(&tiny(&format!("mistral_k.requant_{ty}.llamacpp.f32.bin")));
        let got = all_logits(&load_llama_cpp_f32_kv(&out).model, &prompt, 16);
        let close = positions_within(&got, &want, 256, 1e-4);
        // As for llama.cpp's own files (kquant_gguf.rs): most positions to float noise, a few
        // moved by one flipped 8-bit rounding.
        assert!(
            close >= 32,
            "{ty}: {close}/64 positions within 1e-4 of llama.cpp"
        );
        assert!(max_abs_diff(&got, &want) < 0.5, "{ty}");
    }
}

/// `bora quantize` of `src` to each file type of `digests` (tools/oracle/
/// make_ggml_quantize_fixtures.py): every tensor in the type and with the SHA-256 of llama.cpp's
/// llama_model_quantize of the same file.
fn requantizes_as_llama_quantize_does(src: &Path, digests: &Path, tag: &str) {
    use sha2::{Digest, Sha256};
    let want = read_json(digests);
    for (ty, file) in want["files"].as_object().unwrap() {
        let out = quantize(src, ty, &format!("{tag}.{ty}.gguf"));
        let got = tensors(&out);
        let expected = file["tensors"].as_object().unwrap();
        assert_eq!(got.len(), expected.len(), "{tag} {ty}: tensor count");
        for (name, gt, gb) in &got {
            let w = &expected[name.as_str()];
            let digest: String = Sha256::digest(gb)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(gt, &w[0], "{tag} {ty}: {name}'s type");
            assert_eq!(
                digest, w[1],
                "{tag} {ty}: {name} ({gt}) differs from llama.cpp's bytes"
            );
        }
    }
}

/// A real model: SmolLM2-135M-Instruct Q4_1 to each k-quant file type (q2_k … q6_k). Its
/// 576-wide rows don't split into 256-weight blocks, so this holds bora to llama.cpp's
/// fallbacks (Q2_K, Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0) and to its rule for a
/// token embedding that is also the output; its 30 layers give Q3_K_M a first sixteenth.
#[test]
fn smollm2_is_requantized_as_llama_quantize_does() {
    requantizes_as_llama_quantize_does(
        &smollm2_path(),
        &fixtures().join("smollm2/requant.json"),
        "smollm2",
    );
}

/// A tiny 8-expert Mixtral-shaped file (Q8_0) to each k-quant file type: llama.cpp's rules for
/// 8-expert models (attn_k and attn_v Q8_0, attn_output Q5_K in the smaller mixes), its
/// fallbacks for the experts' 32-wide rows, and its copy of tensors already in the wanted type.
#[test]
fn eight_expert_model_is_requantized_as_llama_quantize_does() {
    requantizes_as_llama_quantize_does(
        &tiny("mixtral8.q8_0.gguf"),
        &tiny("mixtral8.requant.json"),
        "mixtral8",
    );
}

/// A tiny dense file (Q8_0) whose KV heads each serve four query heads, as Mistral 7B's do,
/// to each k-quant file type: every tensor splits into 256-weight blocks, and Q2_K's attn_v is
/// Q4_K here (Q3_K where fewer query heads share a KV head, as in SmolLM2).
#[test]
fn four_queries_a_kv_head_model_is_requantized_as_llama_quantize_does() {
    requantizes_as_llama_quantize_does(&tiny("gqa4.q8_0.gguf"), &tiny("gqa4.requant.json"), "gqa4");
}

#[test]
fn quantizing_at_load_gives_the_rounded_weights_logits() {
    let r = read_json(&tiny("mistral_swa").join("reference.json"));
    let opts = bora::engine::LoadOptions {
        activations: Activations::F32,
        quant: Some(bora::kernels::DType::Q8_0),
        ..Default::default()
    };
    let e = bora::engine::load(&tiny("mistral_swa"), &opts).unwrap();
    assert_eq!(
        e.model.weights.layers[0].wq.dtype,
        bora::kernels::DType::Q8_0
    );
    let got = all_logits(&e.model, &ids(&r["prompt_ids"]), 16);
    let want = read_f32(&tiny("mistral_swa.q8_0.logits.f32.bin"));
    let d = max_abs_diff(&got, &want);
    assert!(d <= 1e-4, "max |Δlogit| {d}");
    // Quantized checkpoints are not quantized again.
    let opts = bora::engine::LoadOptions {
        quant: Some(bora::kernels::DType::Q4_0),
        ..Default::default()
    };
    let err = bora::engine::load(&tiny("mistral_swa.q8_0.gguf"), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("already quantized (Q8_0)"), "{err}");
}

/// A safetensors folder written as GGUF, tokenizer included (tools/oracle/make_hf_to_gguf_fixture.py):
/// the same bytes the oracle gave llama.cpp, which tokenizes the prompt with the file's own
/// vocabulary as bora does and computes bora's logits on that file: to 1e-4 for the lossless
/// F32 file (names, shapes, Q/K row order, metadata all as llama.cpp reads them), and for Q8_0
/// the same top token everywhere, within the two engines' 8-bit activation rounding (0.096
/// measured on logits within ±7; this random model's 32-wide rows are one block each).
#[test]
fn safetensors_folder_to_gguf_with_its_tokenizer_runs_in_llama_cpp_as_in_bora() {
    hf_folder_to_gguf_matches_llama_cpp("tiny_mistral", "hf_to_gguf");
}

/// The same for a Mixtral folder (4 experts, top 2): its per-expert tensors written stacked as
/// `ffn_{gate,up,down}_exps`, with `expert_count`/`expert_used_count`, as llama.cpp reads them.
#[test]
fn mixtral_folder_to_gguf_runs_in_llama_cpp_as_in_bora() {
    hf_folder_to_gguf_matches_llama_cpp("tiny_mixtral", "hf_to_gguf_mixtral");
}

/// The same for a folder whose vocabulary is a tekken.json (cut to 1000 special tokens and 1000
/// ranks): written as llama.cpp's byte-level BPE (`gpt2`, pre-tokenizer `tekken`) with merges
/// recovered from the ranks; llama.cpp's ids from it equal mistral-common's from the tekken.json.
#[test]
fn tekken_folder_to_gguf_runs_in_llama_cpp_as_in_bora() {
    hf_folder_to_gguf_matches_llama_cpp("tiny_tekken", "hf_to_gguf_tekken");
}

/// The same for a folder whose vocabulary is only a tokenizer.json (the v1 vocabulary as
/// transformers writes it): written as llama.cpp's `llama` vocabulary, scores from the merge
/// ranks. The oracle script checked llama.cpp's ids from that file against transformers' from
/// the tokenizer.json for the prompt and every plain text of tokenizer_v1/cases.json; here bora,
/// reading the file it wrote, gives sentencepiece's ids for those texts.
#[test]
fn tokenizer_json_folder_to_gguf_runs_in_llama_cpp_as_in_bora() {
    let fx = read_json(&fixtures().join("eval/hf_to_gguf_tokenizer_json.json"));
    assert!(fx["transformers_texts_agreeing"].as_u64().unwrap() >= 250);
    let cases = read_json(&fixtures().join("tokenizer_v1/cases.json"));
    let plain: Vec<&serde_json::Value> = cases
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["text"] != "" && c.get("contains_special_literal").is_none())
        .collect();
    assert!(plain.len() >= 250, "{} texts", plain.len());
    let sentencepiece_ids = |gguf: &Path| tokenizes_as(gguf, plain.iter().copied());
    hf_folder_to_gguf_matches_llama_cpp_then(
        "tiny_mistral",
        "hf_to_gguf_tokenizer_json",
        &sentencepiece_ids,
    );
}

/// The same tiny model with, instead of its tekken.json, the tokenizer.json transformers
/// converts that file to (a byte-level BPE; tests/fixtures/eval/tekken_tokenizer_json):
/// written as llama.cpp's `gpt2` vocabulary with the `tekken` pre-tokenizer. The oracle script
/// checked llama.cpp's ids from that file against transformers' from the tokenizer.json (kept
/// in the fixture) and, for the prompt, mistral-common's from the tekken.json; here bora,
/// reading the file it wrote, gives transformers' ids for every one of those texts.
#[test]
fn byte_level_tokenizer_json_folder_to_gguf_runs_in_llama_cpp_as_in_bora() {
    let fx = read_json(&fixtures().join("eval/hf_to_gguf_bytelevel.json"));
    let texts = fx["transformers_ids"].as_array().unwrap();
    assert!(texts.len() >= 250, "{} texts", texts.len());
    let transformers_ids = |gguf: &Path| tokenizes_as(gguf, texts.iter());
    hf_folder_to_gguf_matches_llama_cpp_then(
        "tiny_tekken",
        "hf_to_gguf_bytelevel",
        &transformers_ids,
    );
}

/// `bora tokenize` on `gguf`, without BOS, gives each case's `ids` for its `text`.
fn tokenizes_as<'a>(gguf: &Path, cases: impl Iterator<Item = &'a serde_json::Value>) {
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_bora"))
            .args(["tokenize", gguf.to_str().unwrap()])
            .arg(format!("--text={text}"))
            .args(["--json", "--no-bos"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(ids(&got["ids"]), ids(&c["ids"]), "{text:?}");
    }
}

fn hf_folder_to_gguf_matches_llama_cpp(model: &str, fixture: &str) {
    hf_folder_to_gguf_matches_llama_cpp_then(model, fixture, &|_| {})
}

/// Quantizes the model folder `model` (with Mistral's v1 tokenizer.model added unless the
/// fixture is a tokenizer.json one, or the folder has a tekken.json; for the byte-level one,
/// its tekken.json replaced by the converted tokenizer.json), checks the written
/// files against the oracle fixture, and hands each file to `more`.
fn hf_folder_to_gguf_matches_llama_cpp_then(model: &str, fixture: &str, more: &dyn Fn(&Path)) {
    use sha2::Digest;
    let fx = read_json(&fixtures().join(format!("eval/{fixture}.json")));
    let dir = std::env::temp_dir().join(format!("bora-{fixture}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let folder = dir.join("model");
    std::fs::create_dir_all(&folder).unwrap();
    for e in std::fs::read_dir(fixtures().join("eval").join(model)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, folder.join(p.file_name().unwrap())).unwrap();
    }
    if fixture == "hf_to_gguf_bytelevel" {
        std::fs::remove_file(folder.join("tekken.json")).unwrap();
        for e in std::fs::read_dir(fixtures().join("eval/tekken_tokenizer_json")).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, folder.join(p.file_name().unwrap())).unwrap();
        }
    }
    let tokenizer_json_only = matches!(
        fixture,
        "hf_to_gguf_tokenizer_json" | "hf_to_gguf_bytelevel"
    );
    if !folder.join("tekken.json").is_file() && !tokenizer_json_only {
        std::fs::copy(
            fixtures().join("tokenizer_v1/tokenizer.model"),
            folder.join("tokenizer.model"),
        )
        .unwrap();
    }
    let bora = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_bora"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "bora {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    };
    let want_ids = ids(&fx["ids"]);
    let id_list: Vec<String> = want_ids.iter().map(|i| i.to_string()).collect();
    let last = fx["logits_of_last"].as_u64().unwrap() as usize;
    for (ftype, tol) in [("f32", 1e-4f32), ("q8_0", 0.2)] {
        let want = &fx["files"][ftype];
        let out = dir.join(format!("out.{ftype}.gguf"));
        let o = out.to_str().unwrap();
        bora(&["quantize", folder.to_str().unwrap(), o, "--type", ftype]);
        let sha: String = sha2::Sha256::digest(std::fs::read(&out).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            sha,
            want["sha256"].as_str().unwrap(),
            "{ftype}: not the file llama.cpp was given"
        );
        let prompt = fx["prompt"].as_str().unwrap();
        let tok: serde_json::Value =
            serde_json::from_slice(&bora(&["tokenize", o, "--text", prompt, "--json"])).unwrap();
        assert_eq!(
            ids(&tok["ids"]),
            want_ids,
            "{ftype}: llama.cpp tokenizes the file's vocabulary otherwise"
        );
        // The references ran llama.cpp with an f32 KV cache (check_gguf_llamacpp.py).
        let lg: serde_json::Value = serde_json::from_slice(&bora(&[
            "logits",
            o,
            "--ids",
            &id_list.join(","),
            "--all",
            "--kv-type",
            "f32",
            "--json",
        ]))
        .unwrap();
        let rows: Vec<Vec<f32>> = serde_json::from_value(lg["logits"].clone()).unwrap();
        let argmax = |r: &[f32]| (0..r.len()).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap();
        let want_argmax = ids(&want["argmax"]);
        for (p, r) in rows.iter().enumerate() {
            assert_eq!(argmax(r) as u32, want_argmax[p], "{ftype} position {p}");
        }
        let ref_rows = read_f32(
            &fixtures()
                .join("eval")
                .join(want["logits_file"].as_str().unwrap()),
        );
        let got: Vec<f32> = rows[rows.len() - last..].concat();
        let d = max_abs_diff(&got, &ref_rows);
        eprintln!("{fixture} {ftype}: max |Δlogit| vs llama.cpp {d}");
        assert!(d < tol, "{ftype}: max |Δlogit| vs llama.cpp {d}");
        let tekken = folder.join("tekken.json");
        if tekken.is_file() {
            // The file's version (v3 here) still picks the chat format: a system prompt goes
            // into the last user turn, not into v7's [SYSTEM_PROMPT].
            let conv = dir.join("conversation.json");
            std::fs::write(
                &conv,
                r#"[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]"#,
            )
            .unwrap();
            let chat = |args: &[&str]| -> serde_json::Value {
                let mut all = vec!["tokenize"];
                all.extend(args);
                all.extend(["--chat", conv.to_str().unwrap(), "--json"]);
                serde_json::from_slice(&bora(&all)).unwrap()
            };
            let from_gguf = chat(&[o]);
            let from_file = chat(&["--tokenizer", tekken.to_str().unwrap()]);
            assert_eq!(
                from_gguf["ids"], from_file["ids"],
                "{ftype}: chat format changed"
            );
        }
        more(&out);
    }
    std::fs::remove_dir_all(&dir).ok();
}
