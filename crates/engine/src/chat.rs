//! Mistral's instruct formats, token for token as `mistral-common` encodes a chat completion
//! request (test mode): the conversation is validated, same-role neighbours are merged, and
//! each message is encoded by the format's rules.
//!
//! - v1 (Mistral 7B Instruct v0.1/v0.2): `[INST] … [/INST]` as text; the system prompt opens
//!   the first user turn.
//! - v2, v3 (v0.3, and Tekken models such as NeMo): `[INST]`/`[/INST]` control tokens; the
//!   system prompt opens the last user turn; assistant turns lose trailing spaces.
//! - v7: system messages stay where they are, as `[SYSTEM_PROMPT] … [/SYSTEM_PROMPT]`.
//!
//! Every sequence starts with BOS; a finished assistant turn ends with EOS, an unfinished one
//! (`"prefix": true`, last) does not, so the model continues it.

use serde::Deserialize;

use crate::error::{EngineError, Result};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of an OpenAI-style conversation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// An assistant turn to continue rather than answer (only as the last message).
    #[serde(default)]
    pub prefix: bool,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            prefix: false,
        }
    }
}

/// Which of Mistral's instruct formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MistralFormat {
    V1,
    V2,
    V3,
    V7,
}

impl MistralFormat {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "v1" => Self::V1,
            "v2" => Self::V2,
            "v3" => Self::V3,
            "v7" => Self::V7,
            _ => return None,
        })
    }

    /// The format mistral-common gives a Tekken file's declared version: v11 and v13 encode
    /// text conversations as v7 does (they differ in tool calls and thinking).
    pub fn for_tekken_version(v: &str) -> Option<Self> {
        match v {
            "v11" | "v13" => Some(Self::V7),
            other => Self::parse(other),
        }
    }

    /// The format mistral-common gives a tokenizer: a Tekken file's declared version, a
    /// `.model.vN` file's N, else what its control tokens allow.
    pub fn for_tokenizer(tok: &Tokenizer) -> Self {
        if let Some(v) = tok.tekken_version() {
            return Self::for_tekken_version(v).unwrap_or(Self::V7);
        }
        let name = tok
            .source()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        if let Some(v) = name
            .rsplit(".model.")
            .next()
            .filter(|_| name.contains(".model."))
        {
            if let Some(f) = Self::parse(v.trim_end_matches(|c: char| !c.is_ascii_digit())) {
                return f;
            }
        }
        match (tok.token_id("[INST]"), tok.token_id("[SYSTEM_PROMPT]")) {
            (Some(_), Some(_)) => Self::V7,
            (Some(_), None) => Self::V3,
            _ => Self::V1,
        }
    }
}

/// How a conversation becomes tokens: one of Mistral's formats, or the model's template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatFormat {
    Mistral(MistralFormat),
    Jinja(String),
}

impl ChatFormat {
    /// Decided from the model's files: Mistral's own tokenizer files (tekken.json,
    /// tokenizer.model.vN) get Mistral's format; otherwise the model's Jinja template when it
    /// has one; otherwise the Mistral format its control tokens allow.
    pub fn for_tokenizer(tok: &Tokenizer) -> Self {
        let native = tok.tekken_version().is_some() || Tokenizer::is_mistral_file(tok.source());
        match &tok.chat_template {
            Some(t) if !native => Self::Jinja(t.clone()),
            _ => Self::Mistral(MistralFormat::for_tokenizer(tok)),
        }
    }

    /// `--chat-format`: v1, v2, v3, v7, tekken or jinja; None decides from the files.
    pub fn choose(tok: &Tokenizer, asked: Option<&str>) -> Result<Self> {
        match asked {
            // A Tekken file of a version bora does not know is an error, not a guess.
            None if tok.tekken_version().is_some() => Self::choose(tok, Some("tekken")),
            None => Ok(Self::for_tokenizer(tok)),
            Some("tekken") => match tok.tekken_version() {
                Some(v) => MistralFormat::for_tekken_version(v)
                    .map(Self::Mistral)
                    .ok_or_else(|| {
                        invalid(format!(
                            "this Tekken file declares version {v}, whose chat format bora does not know (v3, v7, v11 and v13 it does)"
                        ))
                    }),
                None => Err(invalid(format!(
                    "the tekken format needs a Tekken tokenizer (tekken.json); this one is {}",
                    tok.kind()
                ))),
            },
            Some("jinja") => tok.chat_template.clone().map(Self::Jinja).ok_or_else(|| {
                invalid("the model has no chat_template (tokenizer_config.json or GGUF tokenizer.chat_template)")
            }),
            Some(f) => MistralFormat::parse(f).map(Self::Mistral).ok_or_else(|| {
                invalid(format!("format '{f}' is not one of v1, v2, v3, v7, tekken, jinja"))
            }),
        }
    }

    /// The conversation's ids, ready for the model to answer (or to continue a prefix).
    pub fn encode(&self, tok: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>> {
        self.encode_with(tok, messages, true)
    }

    /// [`Self::encode`], with a template's `add_generation_prompt` as given (vLLM's
    /// `/tokenize` takes it). Mistral's formats have no generation prompt to leave out: a
    /// conversation always ends where the answer begins, as mistral-common encodes it.
    pub fn encode_with(
        &self,
        tok: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        match self {
            Self::Mistral(f) => encode_mistral(tok, *f, messages),
            Self::Jinja(t) => {
                crate::chat_template::encode_template(tok, t, messages, add_generation_prompt)
            }
        }
    }
}

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::InvalidChat(msg.into())
}

/// mistral-common's checks on a conversation before encoding it.
pub fn validate(messages: &[Message]) -> Result<()> {
    let Some(last) = messages.last() else {
        return Err(invalid("the conversation has no messages"));
    };
    if messages.len() == 1 && last.role == Role::Assistant {
        return Err(invalid(
            "a conversation must start with a user or system message",
        ));
    }
    if messages.len() > 1 && last.role == Role::Assistant && !last.prefix {
        return Err(invalid(
            "the last message must not be a finished assistant turn (mark it \"prefix\": true to continue it)",
        ));
    }
    for (i, w) in messages.windows(2).enumerate() {
        if w[0].role == Role::Assistant && w[1].role == Role::System {
            return Err(invalid(format!(
                "message {}: a system message cannot follow an assistant message",
                i + 2
            )));
        }
    }
    for (i, m) in messages.iter().enumerate() {
        if m.role == Role::Assistant && m.content.is_empty() {
            return Err(invalid(format!(
                "message {}: an assistant message needs content",
                i + 1
            )));
        }
        if m.prefix && (m.role != Role::Assistant || i + 1 != messages.len()) {
            return Err(invalid(format!(
                "message {}: only the last message, an assistant one, can be a prefix",
                i + 1
            )));
        }
    }
    Ok(())
}

/// A conversation after mistral-common's normalizer.
struct Normalized {
    system_prompt: Option<String>,
    messages: Vec<Message>,
}

const JOIN: &str = "\n\n";

/// Merges runs of same-role messages (their non-empty contents joined by a blank line);
/// before v7 system messages leave the list for one system prompt, and a conversation not
/// opening with a user turn gets an empty one.
fn normalize(messages: &[Message], format: MistralFormat) -> Normalized {
    let v7 = format == MistralFormat::V7;
    let system_prompt = (!v7)
        .then(|| {
            let parts: Vec<&str> = messages
                .iter()
                .filter(|m| m.role == Role::System && !m.content.is_empty())
                .map(|m| m.content.as_str())
                .collect();
            (!parts.is_empty()).then(|| parts.join(JOIN))
        })
        .flatten();
    let mut out: Vec<Message> = Vec::new();
    let mut i = 0;
    while i < messages.len() {
        let role = messages[i].role;
        let mut j = i;
        while j < messages.len() && messages[j].role == role {
            j += 1;
        }
        let run = &messages[i..j];
        match role {
            Role::System if !v7 => {}
            // v7 keeps each system message as it is.
            Role::System => out.extend(run.iter().cloned()),
            _ => {
                let parts: Vec<&str> = run
                    .iter()
                    .map(|m| m.content.as_str())
                    .filter(|c| !c.is_empty())
                    .collect();
                out.push(Message {
                    role,
                    content: parts.join(JOIN),
                    prefix: run.iter().any(|m| m.prefix),
                });
            }
        }
        i = j;
    }
    if out.is_empty() || (!v7 && out[0].role != Role::User) {
        out.insert(0, Message::new(Role::User, ""));
    }
    Normalized {
        system_prompt,
        messages: out,
    }
}

/// The token ids of `messages` in `format`, as mistral-common encodes them.
pub fn encode_mistral(
    tok: &Tokenizer,
    format: MistralFormat,
    messages: &[Message],
) -> Result<Vec<u32>> {
    validate(messages)?;
    let n = normalize(messages, format);
    let control = |name: &str| {
        tok.token_id(name).ok_or_else(|| {
            invalid(format!(
                "the {format:?} format needs the control token {name}, which this tokenizer lacks (try --chat-format v1)"
            ))
        })
    };
    let bos = tok
        .bos
        .ok_or_else(|| invalid("the tokenizer has no BOS token"))?;
    let eos = *tok
        .eos
        .first()
        .ok_or_else(|| invalid("the tokenizer has no EOS token"))?;
    let first_user = n.messages.iter().position(|m| m.role == Role::User);
    let last_user = n.messages.iter().rposition(|m| m.role == Role::User);
    let with_system = |content: &str| match &n.system_prompt {
        Some(sp) => format!("{sp}{JOIN}{content}"),
        None => content.to_string(),
    };
    let mut ids = vec![bos];
    for (i, m) in n.messages.iter().enumerate() {
        match (m.role, format) {
            (Role::User, MistralFormat::V1) => {
                let content = if Some(i) == first_user {
                    with_system(&m.content)
                } else {
                    m.content.clone()
                };
                ids.extend(tok.encode_plain(&format!("[INST] {content} [/INST]"))?);
            }
            (Role::User, _) => {
                let content = if Some(i) == last_user {
                    with_system(&m.content)
                } else {
                    m.content.clone()
                };
                ids.push(control("[INST]")?);
                ids.extend(tok.encode_plain(&content)?);
                ids.push(control("[/INST]")?);
            }
            (Role::Assistant, f) => {
                let text = if f == MistralFormat::V1 {
                    m.content.as_str()
                } else {
                    m.content.trim_end_matches(' ')
                };
                ids.extend(tok.encode_plain(text)?);
                if !m.prefix {
                    ids.push(eos);
                }
            }
            (Role::System, _) => {
                ids.push(control("[SYSTEM_PROMPT]")?);
                ids.extend(tok.encode_plain(&m.content)?);
                ids.push(control("[/SYSTEM_PROMPT]")?);
            }
        }
    }
    Ok(ids)
}

/// Reads an OpenAI-style conversation: a JSON list of messages, or `{"messages": [...]}`.
pub fn parse_conversation(json: &str) -> Result<Vec<Message>> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Doc {
        List(Vec<Message>),
        Object { messages: Vec<Message> },
    }
    match serde_json::from_str::<Doc>(json) {
        Ok(Doc::List(m)) | Ok(Doc::Object { messages: m }) => Ok(m),
        Err(_) => {
            // Say which message is wrong: parse them one by one.
            let v: serde_json::Value =
                serde_json::from_str(json).map_err(|e| invalid(format!("not JSON: {e}")))?;
            let list = v
                .get("messages")
                .unwrap_or(&v)
                .as_array()
                .ok_or_else(|| invalid("expected a list of messages"))?;
            for (i, m) in list.iter().enumerate() {
                if let Err(e) = serde_json::from_value::<Message>(m.clone()) {
                    return Err(invalid(format!(
                        "message {}: {e} (expected {{\"role\": \"system\"|\"user\"|\"assistant\", \"content\": \"…\", \"prefix\": false}})",
                        i + 1
                    )));
                }
            }
            Err(invalid("expected a list of messages"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: Role, c: &str) -> Message {
        Message::new(role, c)
    }

    #[test]
    fn same_role_runs_merge_and_system_prompts_gather_before_v7() {
        let msgs = [
            m(Role::System, "be brief"),
            m(Role::User, "a"),
            m(Role::User, ""),
            m(Role::User, "b"),
            m(Role::Assistant, "c"),
            m(Role::System, "again"),
            m(Role::User, "d"),
        ];
        let n = normalize(&msgs, MistralFormat::V3);
        assert_eq!(n.system_prompt.as_deref(), Some("be brief\n\nagain"));
        let contents: Vec<&str> = n.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["a\n\nb", "c", "d"]);
        let n7 = normalize(&msgs, MistralFormat::V7);
        assert_eq!(n7.system_prompt, None);
        assert_eq!(n7.messages.len(), 5);
        // Before v7 a conversation opening with an assistant turn gets an empty user turn.
        let n = normalize(
            &[m(Role::System, "s"), m(Role::Assistant, "x")],
            MistralFormat::V1,
        );
        assert_eq!(n.messages[0], m(Role::User, ""));
    }

    #[test]
    fn invalid_conversations_are_refused_with_a_reason() {
        assert!(validate(&[]).is_err());
        assert!(validate(&[m(Role::Assistant, "x")]).is_err());
        assert!(validate(&[m(Role::User, "x"), m(Role::Assistant, "y")]).is_err());
        // A final system message is accepted, as mistral-common's test mode accepts it.
        assert!(validate(&[m(Role::User, "x"), m(Role::System, "y")]).is_ok());
        let mut p = m(Role::Assistant, "y");
        p.prefix = true;
        assert!(validate(&[m(Role::User, "x"), p.clone()]).is_ok());
        assert!(validate(&[p, m(Role::User, "x")]).is_err());
        assert!(validate(&[
            m(Role::User, "x"),
            m(Role::Assistant, ""),
            m(Role::User, "z")
        ])
        .is_err());
        let e = parse_conversation(
            r#"[{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("message 2"), "{e}");
    }
}
