//! Jinja chat templates against transformers' apply_chat_template
//! (tests/fixtures/chat/transformers_templates.json, tools/oracle/make_template_fixtures.py):
//! the demo model's own ChatML template from its GGUF, and a Mistral-v0.1-style template in
//! a tokenizer_config.json; the same text and the same ids for every conversation
//! (generation prompt, continuing a final assistant prefix), and the template's own errors.

mod common;

use bora::engine::chat::{parse_conversation, ChatFormat};
use bora::engine::chat_template::render;
use bora::engine::Tokenizer;
use common::*;

fn tokenizer(name: &str) -> Tokenizer {
    let path = match name {
        "smollm2" => smollm2_path(),
        _ => fixtures().join("chat/jinja_v1/tokenizer.json"),
    };
    bora::engine::load_tokenizer(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn templates_render_and_tokenize_as_transformers_does() {
    let fx = read_json(&fixtures().join("chat/transformers_templates.json"));
    let mut checked = 0;
    for name in ["smollm2", "jinja_v1"] {
        let tok = tokenizer(name);
        let format = ChatFormat::for_tokenizer(&tok);
        let ChatFormat::Jinja(template) = &format else {
            panic!("{name}: expected its Jinja template to be chosen, got {format:?}");
        };
        for case in fx["cases"].as_array().unwrap() {
            let case_name = case["name"].as_str().unwrap();
            let messages = parse_conversation(&case["messages"].to_string()).unwrap();
            let want = &case["expected"][name];
            let bos = tok.piece(tok.bos.unwrap());
            let eos = tok.piece(tok.eos[0]);
            let text = render(template, &messages, true, &bos, &eos);
            let ids = format.encode(&tok, &messages);
            match want.get("error") {
                Some(e) => {
                    let got = text.expect_err(case_name).to_string();
                    let msg = e.as_str().unwrap().split(": ").nth(1).unwrap();
                    assert!(got.contains(msg), "{name} / {case_name}: {got} vs {e}");
                    assert!(ids.is_err());
                }
                None => {
                    assert_eq!(
                        text.unwrap(),
                        want["text"].as_str().unwrap(),
                        "{name} / {case_name}"
                    );
                    assert_eq!(
                        ids.unwrap(),
                        common::ids(&want["ids"]),
                        "{name} / {case_name}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}
