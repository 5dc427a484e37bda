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

#[test]
fn streaming_decode_is_whole_characters_with_spaces_kept() {
    check_streaming(&load_tokenizer(&dir().join("tokenizer.json")).unwrap());
    check_streaming(&load_tokenizer(&dir().join("vocab.gguf")).unwrap());
}
