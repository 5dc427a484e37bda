//! A model's own Jinja chat template (`chat_template` in tokenizer_config.json, or GGUF's
//! `tokenizer.chat_template`), rendered with minijinja the way transformers'
//! `apply_chat_template` renders it: blocks trimmed, Python string methods available,
//! `raise_exception` for the template's own checks, and the text tokenized with special
//! tokens recognised and no BOS added (the template writes its own).

use minijinja::{context, Environment, Error, ErrorKind};

use crate::chat::{Message, Role};
use crate::error::{EngineError, Result};
use crate::tokenizer::Tokenizer;

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// The text `template` makes of `messages`. A final assistant message with `prefix` is
/// continued: the text stops right after its content, as transformers'
/// `continue_final_message` does; otherwise `add_generation_prompt` opens the answer.
pub fn render(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let err = |e: Error| EngineError::InvalidChat(format!("chat template: {e:#}"));
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_template("chat", template).map_err(err)?;
    let continue_final = messages
        .last()
        .is_some_and(|m| m.prefix && m.role == Role::Assistant);
    let n = messages.len();
    let list: Vec<_> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            // The final message to continue carries a tag, cut off again after rendering.
            let content = if continue_final && i + 1 == n {
                format!("{}{CONTINUE_TAG}", m.content)
            } else {
                m.content.clone()
            };
            context! { role => role_name(m.role), content => content }
        })
        .collect();
    let text = env
        .get_template("chat")
        .and_then(|t| {
            t.render(context! {
                messages => list,
                add_generation_prompt => add_generation_prompt && !continue_final,
                bos_token => bos_token,
                eos_token => eos_token,
            })
        })
        .map_err(err)?;
    if !continue_final {
        return Ok(text);
    }
    // As transformers: cut at the tag; if the template trimmed the space after it, trim too.
    let tag = CONTINUE_TAG.trim();
    let last = messages.last().map(|m| m.content.trim()).unwrap_or("");
    match text.rfind(tag) {
        Some(at) if text.contains(last) => {
            if text[at..].starts_with(CONTINUE_TAG) {
                Ok(text[..at].to_string())
            } else {
                Ok(text[..at].trim_end().to_string())
            }
        }
        _ => Err(EngineError::InvalidChat(
            "cannot continue the final message: the template does not write its content".into(),
        )),
    }
}

/// transformers' marker for the end of a message to continue.
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";

/// Renders the tokenizer's template and tokenizes the text.
pub fn encode_template(
    tok: &Tokenizer,
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<Vec<u32>> {
    let piece = |id: Option<u32>| id.map(|i| tok.piece(i)).unwrap_or_default();
    let text = render(
        template,
        messages,
        add_generation_prompt,
        &piece(tok.bos),
        &piece(tok.eos.first().copied()),
    )?;
    tok.encode(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_python_style_templates_and_their_errors() {
        let t = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[U]{{ m['content'].strip() }}\n{% else %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}{% endfor %}{% if add_generation_prompt %}[A]{% endif %}";
        let msgs = [Message::new(Role::User, "  hi  ")];
        assert_eq!(
            render(t, &msgs, true, "<s>", "</s>").unwrap(),
            "<s>[U]hi\n[A]"
        );
        let e = render(t, &[Message::new(Role::System, "x")], true, "<s>", "</s>").unwrap_err();
        assert!(e.to_string().contains("bad role system"), "{e}");
        assert!(render("{% for %}", &msgs, true, "", "").is_err());
        // Continuing a prefix ends right after its content, spaces kept, even when the
        // content also occurs in the template's own markers.
        let chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}";
        let mut p = Message::new(Role::Assistant, "end");
        p.prefix = true;
        let r = render(
            chatml,
            &[Message::new(Role::User, "q"), p.clone()],
            true,
            "",
            "",
        )
        .unwrap();
        assert!(r.ends_with("<|im_start|>assistant\nend"), "{r:?}");
        p.content = "Sure, ".into();
        let r = render(chatml, &[Message::new(Role::User, "q"), p], true, "", "").unwrap();
        assert!(r.ends_with("assistant\nSure, "), "{r:?}");
    }
}
