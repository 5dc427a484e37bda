//! Mistral's instruct formats against mistral-common (tests/fixtures/chat/, made by
//! tools/oracle/make_chat_fixtures.py): for every tokenizer file it ships (SentencePiece v1,
//! v2, v3, v7; Tekken 240718 and 240911) and every conversation — one turn, many turns,
//! system prompts, empty and unicode messages, assistant prefixes, and invalid ones — bora's
//! token ids are identical, or bora refuses what mistral-common refuses. The tokenizer files
//! come from the mistral-common wheel (tools/fetch-mistral-tokenizers.sh, run by tools/test.sh).

mod common;

use std::path::PathBuf;

use bora::engine::chat::{encode_mistral, parse_conversation, MistralFormat};
use bora::engine::Tokenizer;
use common::*;

fn data_dir() -> PathBuf {
    let dir = std::env::var_os("BORA_MISTRAL_TOKENIZERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/bora/pypi/mistral-common/mistral_common/data")
        });
    assert!(
        dir.join("tekken_240911.json").exists(),
        "{}: Mistral's tokenizer files not found: run tools/fetch-mistral-tokenizers.sh (or tools/test.sh), or set BORA_MISTRAL_TOKENIZERS",
        dir.display()
    );
    dir
}

fn cases() -> serde_json::Value {
    read_json(&fixtures().join("chat/mistral_common_cases.json"))
}

fn tokenizers() -> Vec<(String, Tokenizer)> {
    let c = cases();
    c["tokenizers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, f)| {
            let path = data_dir().join(f.as_str().unwrap());
            let tok = bora::engine::load_tokenizer(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (k.clone(), tok)
        })
        .collect()
}

#[test]
fn formats_are_detected_as_mistral_common_assigns_them() {
    for (k, tok) in tokenizers() {
        let want = match k.as_str() {
            "v1" => MistralFormat::V1,
            "v2" => MistralFormat::V2,
            "v3" | "tekken_240718" | "tekken_240911" => MistralFormat::V3,
            "v7" => MistralFormat::V7,
            other => panic!("unexpected tokenizer {other}"),
        };
        assert_eq!(MistralFormat::for_tokenizer(&tok), want, "{k}");
    }
}

#[test]
fn every_conversation_encodes_to_mistral_commons_ids() {
    let c = cases();
    let toks = tokenizers();
    let mut checked = 0;
    for case in c["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let messages = parse_conversation(&case["messages"].to_string()).unwrap();
        for (k, tok) in &toks {
            let got = encode_mistral(tok, MistralFormat::for_tokenizer(tok), &messages);
            let want = &case["expected"][k];
            match (got, want.get("error")) {
                (Ok(ids), None) => assert_eq!(ids, common::ids(want), "{name} / {k}"),
                (Err(_), Some(_)) => {}
                (Ok(ids), Some(e)) => {
                    panic!("{name} / {k}: mistral-common refuses ({e}), bora gave {ids:?}")
                }
                (Err(e), None) => {
                    panic!("{name} / {k}: bora refuses ({e}), mistral-common gives {want}")
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 150, "only {checked} cases");
}

#[test]
fn plain_text_encodes_to_mistral_commons_ids() {
    let c = cases();
    let toks = tokenizers();
    for t in c["texts"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        for (k, tok) in &toks {
            assert_eq!(
                tok.encode_plain(text).unwrap(),
                ids(&t["expected"][k]),
                "{text:?} / {k}"
            );
        }
    }
}

#[test]
fn tokenize_command_encodes_a_conversation_file() {
    let c = cases();
    let case = c["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "system and many turns")
        .unwrap();
    let file = std::env::temp_dir().join(format!("bora-chat-{}.json", std::process::id()));
    std::fs::write(&file, case["messages"].to_string()).unwrap();
    let run = |tok: &str, format: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bora"));
        cmd.args(["tokenize", "--tokenizer"])
            .arg(data_dir().join(c["tokenizers"][tok].as_str().unwrap()))
            .arg("--chat")
            .arg(&file)
            .arg("--json");
        if let Some(f) = format {
            cmd.args(["--chat-format", f]);
        }
        cmd.output().unwrap()
    };
    for tok in ["v7", "tekken_240911"] {
        let out = run(tok, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ids(&got["ids"]), ids(&case["expected"][tok]), "{tok}");
    }
    // An explicit format overrides the detected one: v3 rules on the v7 tokenizer put the
    // system prompt in the last user turn.
    let out = run("v7", Some("v3"));
    assert!(out.status.success());
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(ids(&got["ids"]), ids(&case["expected"]["v7"]));
    let out = run("v3", Some("tekken"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Tekken"));
    std::fs::remove_file(&file).ok();
}
