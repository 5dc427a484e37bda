//! The real Mistral 7B v0.1 tokenizer (tokenizer.model.v1, shipped by mistral-common) against
//! sentencepiece: as a tokenizer.json through the `tokenizers` crate, and as the vocabulary a
//! GGUF file embeds (bora's own SentencePiece-BPE). Fixtures: tools/oracle/make_tokenizer_fixtures.py.

mod common;

use bora::engine::{load_tokenizer, StreamDecoder, Tokenizer};
use common::*;

fn dir() -> std::path::PathBuf {
    fixtures().join("tokenizer_v1")
}

fn cases() -> Vec<(String, Vec<u32>, serde_json::Value)> {
    let v = read_json(&dir().join("cases.json"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["text"].as_str().unwrap().to_string(),
                ids(&c["ids"]),
                c.clone(),
            )
        })
        .collect()
}

fn check_encode(tok: &Tokenizer, what: &str) {
    let cases = cases();
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    let mut bad = Vec::new();
    for (text, want, _) in &cases {
        let got = tok.encode_plain(text).unwrap();
        if &got != want {
            bad.push(format!("{text:?}: got {got:?}, sentencepiece {want:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} of {} cases differ:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
}

fn check_decode(tok: &Tokenizer, what: &str) {
    for (text, ids, case) in cases() {
        // sentencepiece's own decode of the same ids is the oracle (it does not always return
        // the input, e.g. a leading space is dropped with the dummy prefix).
        let want = case["decoded"].as_str().unwrap_or(&text);
        assert_eq!(tok.decode(&ids), want, "{what}: decode of {text:?}");
        if case["roundtrip"].as_bool() == Some(true) {
            assert_eq!(
                tok.decode(&tok.encode_plain(&text).unwrap()),
                text,
                "{what}: round trip of {text:?}"
            );
        }
    }
}

#[test]
fn tokenizer_json_matches_sentencepiece() {
    let tok = load_tokenizer(&dir().join("tokenizer.json")).unwrap();
    check_encode(&tok, "tokenizer.json");
    check_decode(&tok, "tokenizer.json");
}

/// In prompts, text spelling `<s>`/`</s>`/`<unk>` is the control token, as HF `tokenizers`
/// encodes by default (its ids recorded in the fixture).
#[test]
fn special_token_text_in_prompts_matches_hf_tokenizers() {
    let tok = load_tokenizer(&dir().join("tokenizer.json")).unwrap();
    let mut n = 0;
    for (text, _, case) in cases() {
        if case["contains_special_literal"].as_bool() == Some(true) {
            assert_eq!(
                tok.encode(&text).unwrap(),
                ids(&case["hf_default_ids"]),
                "{text:?}"
            );
            n += 1;
        }
    }
    assert!(n >= 5, "only {n} cases with special-token text");
    // The GGUF vocabulary recognises the same control tokens and spells the rest as before.
    let g = load_tokenizer(&dir().join("vocab.gguf")).unwrap();
    let ids = g.encode("<s>Hello</s>").unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    assert_eq!(ids[1..ids.len() - 1], g.encode_plain("Hello").unwrap()[..]);
    assert!(!g.encode_plain("<s>").unwrap().contains(&1));
}

#[test]
fn gguf_vocabulary_matches_sentencepiece() {
    let tok = load_tokenizer(&dir().join("vocab.gguf")).unwrap();
    check_encode(&tok, "vocab.gguf");
    check_decode(&tok, "vocab.gguf");
    assert_eq!(tok.bos, Some(1));
    assert_eq!(tok.eos, vec![2]);
    assert!(tok.add_bos);
}

/// Streaming prints exactly the text a one-shot decode gives, never a U+FFFD from a character
/// split across byte-fallback tokens, and keeps the space before a continued word.
fn check_streaming(tok: &Tokenizer) {
    for (text, ids, _) in cases() {
        if ids.len() < 2 {
            continue;
        }
        let (prompt, rest) = ids.split_at(1);
        let mut dec = StreamDecoder::new(prompt);
        let mut streamed = String::new();
        for &id in rest {
            if let Some(piece) = dec.push(tok, id) {
                assert!(
                    !piece.contains('\u{FFFD}') || text.contains('\u{FFFD}'),
                    "{text:?}: emitted {piece:?}"
                );
                streamed.push_str(&piece);
            }
        }
        streamed.extend(dec.flush(tok));
        let whole = tok.decode(&ids);
        let head = tok.decode(prompt);
        assert_eq!(format!("{head}{streamed}"), whole, "streaming {text:?}");
    }
}

/// A long prompt tokenizes like short ones (the merge is O(n log n)) and decodes back.
#[test]
fn long_prompt_round_trips() {
    let g = load_tokenizer(&dir().join("vocab.gguf")).unwrap();
    let j = load_tokenizer(&dir().join("tokenizer.json")).unwrap();
    let unit = "The sliding window attends to 4096 keys; 滑动窗口 🙂 x=1\n";
    let text = unit.repeat(3000);
    let ids = g.encode_plain(&text).unwrap();
    assert_eq!(g.decode(&ids), text);
    assert_eq!(ids, j.encode_plain(&text).unwrap());
}

/// A prompt that ends inside a character (its first byte-fallback token) still streams the
/// character once the model completes it.
#[test]
fn streaming_after_a_prompt_ending_mid_character() {
    let tok = load_tokenizer(&dir().join("vocab.gguf")).unwrap();
    let ids = tok.encode_plain("a 🦀 b").unwrap();
    let byte0 = ids
        .iter()
        .position(|&id| tok.piece(id).starts_with("<0x"))
        .expect("byte-fallback emoji");
    let (prompt, rest) = ids.split_at(byte0 + 1);
    let mut dec = StreamDecoder::new(prompt);
    let mut out = String::new();
    for &id in rest {
        out.extend(dec.push(&tok, id));
    }
    out.extend(dec.flush(&tok));
    assert!(out.ends_with(" b") && out.contains('🦀'), "{out:?}");
}

/// Without add_bos_token in tokenizer_config.json, BOS follows the tokenizer's post-processor.
#[test]
fn bos_policy_of_tokenizer_json() {
    assert!(
        load_tokenizer(&dir().join("tokenizer.json"))
            .unwrap()
            .add_bos,
        "tokenizer_config.json says add_bos_token"
    );
    let d = std::env::temp_dir().join(format!("bora-tok-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(dir().join("tokenizer.json"), d.join("tokenizer.json")).unwrap();
    // This tokenizer.json has no post-processor: it adds no BOS, so neither does bora.
    assert!(!load_tokenizer(&d.join("tokenizer.json")).unwrap().add_bos);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn streaming_decode_is_whole_characters_with_spaces_kept() {
    check_streaming(&load_tokenizer(&dir().join("tokenizer.json")).unwrap());
    check_streaming(&load_tokenizer(&dir().join("vocab.gguf")).unwrap());
}
