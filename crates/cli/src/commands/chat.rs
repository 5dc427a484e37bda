//! `bora chat`: a conversation in the model's instruct format. The KV cache outlives each
//! turn: a new turn re-encodes the conversation, keeps the cached positions it shares with
//! what the cache holds, and feeds only the rest.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bora_engine::chat::{parse_conversation, ChatFormat, Message, Role};
use bora_engine::{default_prefill_chunk, Engine, Sampler, SamplingParams, Session, StreamDecoder};
use bora_model::{LogitsRows, DEFAULT_BLOCK_SIZE};
use rustyline::error::ReadlineError;

use crate::args::ChatArgs;

const HELP: &str = "\
  /system TEXT     set the system prompt (/system alone clears it)
  /reset           forget the conversation (the system prompt stays)
  /save FILE       write the conversation as JSON (OpenAI message list)
  /load FILE       read a conversation written by /save
  /set             show the sampling settings
  /set NAME VALUE  temp, top_k, top_p, min_p, repeat_penalty, seed, max_tokens
  /help            this list
  /bye             leave (or Ctrl-D)
  End a line with \\ to go on to the next; \"\"\" starts and ends a block of lines.
  Ctrl-C stops an answer.";

/// Why an answer ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    EndOfTurn,
    Limit,
    Interrupted,
    ContextFull,
}

struct Chat<'m> {
    engine: &'m Engine,
    format: ChatFormat,
    session: Session<'m>,
    /// The ids whose keys and values the cache holds, in order.
    cached: Vec<u32>,
    system: Option<String>,
    messages: Vec<Message>,
    sampling: SamplingParams,
    max_tokens: Option<usize>,
    chunk: usize,
}

impl<'m> Chat<'m> {
    fn conversation(&self) -> Vec<Message> {
        let mut all = Vec::with_capacity(self.messages.len() + 1);
        if let Some(s) = &self.system {
            all.push(Message::new(Role::System, s.clone()));
        }
        all.extend(self.messages.iter().cloned());
        all
    }

    fn context(&self) -> usize {
        self.engine.model.config.max_context
    }

    /// The ids of the conversation so far, ready for the model's answer.
    fn prompt_ids(&self) -> Result<Vec<u32>> {
        let tok = self.engine.tokenizer()?;
        Ok(self.format.encode(tok, &self.conversation())?)
    }

    /// Feeds what the cache lacks of `ids`, reusing the shared prefix; returns the last
    /// logits, or None when Ctrl-C came first.
    fn prefill(&mut self, ids: &[u32], stop: &AtomicBool) -> Result<Option<Vec<f32>>> {
        if ids.is_empty() {
            bail!("the chat format produced no tokens for this conversation");
        }
        let mut shared = self
            .cached
            .iter()
            .zip(ids)
            .take_while(|(a, b)| a == b)
            .count();
        // The last prompt token must be fed again for its logits.
        shared = shared.min(ids.len() - 1);
        let kept = self.session.rewind(shared);
        self.cached.truncate(kept);
        let chunks: Vec<&[u32]> = ids[kept..].chunks(self.chunk.max(1)).collect();
        let mut logits = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            if stop.swap(false, Ordering::SeqCst) {
                return Ok(None);
            }
            let rows = if i + 1 == chunks.len() {
                LogitsRows::Last
            } else {
                LogitsRows::None
            };
            logits = self.session.step(c, rows)?;
            self.cached.extend_from_slice(c);
        }
        Ok(Some(logits))
    }

    /// Generates the answer to the conversation, streaming it to `out`.
    fn answer(&mut self, stop: &AtomicBool, out: &mut impl Write) -> Result<(String, Ending)> {
        let ids = self.prompt_ids()?;
        if ids.len() >= self.context() {
            return Ok((String::new(), Ending::ContextFull));
        }
        let tok = self.engine.tokenizer()?;
        let stop_ids = self.engine.stop_tokens();
        let Some(mut logits) = self.prefill(&ids, stop)? else {
            writeln!(out)?;
            return Ok((String::new(), Ending::Interrupted));
        };
        let mut sampler = Sampler::new(self.sampling.clone())?;
        let mut stream = StreamDecoder::new(&ids);
        let mut generated: Vec<u32> = Vec::new();
        let mut text = String::new();
        let ending = loop {
            if stop.swap(false, Ordering::SeqCst) {
                break Ending::Interrupted;
            }
            let next = sampler.sample(&logits, &self.cached)?;
            if stop_ids.contains(&next) {
                break Ending::EndOfTurn;
            }
            generated.push(next);
            if let Some(piece) = stream.push(tok, next) {
                text.push_str(&piece);
                out.write_all(piece.as_bytes())?;
                out.flush()?;
            }
            if self.max_tokens.is_some_and(|m| generated.len() >= m) {
                break Ending::Limit;
            }
            if self.cached.len() + 1 >= self.context() {
                break Ending::ContextFull;
            }
            self.session
                .step_into(&[next], LogitsRows::Last, &mut logits)?;
            self.cached.push(next);
        };
        if let Some(rest) = stream.flush(tok) {
            text.push_str(&rest);
            out.write_all(rest.as_bytes())?;
        }
        writeln!(out)?;
        out.flush()?;
        Ok((text, ending))
    }

    /// Takes a user turn and answers it; the answer (even a cut one) joins the conversation.
    /// A turn that got no answer leaves the conversation as it was, so roles keep alternating.
    fn turn(&mut self, user: String, stop: &AtomicBool, interactive: bool) -> Result<()> {
        self.messages.push(Message::new(Role::User, user));
        let result = self.answer_turn(stop, interactive);
        if !matches!(result, Ok(true)) {
            self.messages.pop();
        }
        result.map(|_| ())
    }

    /// Returns whether an answer joined the conversation.
    fn answer_turn(&mut self, stop: &AtomicBool, interactive: bool) -> Result<bool> {
        loop {
            let (text, ending) = self.answer(stop, &mut std::io::stdout().lock())?;
            match ending {
                Ending::ContextFull if text.is_empty() => {
                    if !interactive || !self.offer_to_drop_oldest()? {
                        bail!(
                            "the conversation no longer fits the context of {} tokens",
                            self.context()
                        );
                    }
                    continue;
                }
                Ending::ContextFull => eprintln!(
                    "[the context of {} tokens is full: the answer stops here; /reset to start over]",
                    self.context()
                ),
                Ending::Interrupted => eprintln!("[stopped]"),
                Ending::Limit | Ending::EndOfTurn => {}
            }
            if text.trim().is_empty() {
                return Ok(false);
            }
            self.messages.push(Message::new(Role::Assistant, text));
            return Ok(true);
        }
    }

    /// Asks whether to drop the oldest exchange; drops it on yes.
    fn offer_to_drop_oldest(&mut self) -> Result<bool> {
        let n = self.prompt_ids()?.len();
        eprint!(
            "The conversation ({n} tokens) no longer fits the context of {} tokens. Drop the oldest turns? [Y/n] ",
            self.context()
        );
        std::io::stderr().flush()?;
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        if line.trim().to_lowercase().starts_with('n') || self.messages.len() < 2 {
            return Ok(false);
        }
        // The oldest user turn and the answer to it.
        let cut = self
            .messages
            .iter()
            .skip(1)
            .position(|m| m.role == Role::User)
            .map_or(self.messages.len() - 1, |p| p + 1);
        self.messages.drain(..cut);
        Ok(true)
    }

    fn reset(&mut self) {
        self.messages.clear();
        self.session.rewind(0);
        self.cached.clear();
    }

    /// A line starting with `/`; returns false to leave.
    fn command(&mut self, line: &str) -> Result<bool> {
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        match cmd {
            "/bye" | "/exit" | "/quit" => return Ok(false),
            "/help" | "/?" => println!("{HELP}"),
            "/system" => {
                self.system = (!rest.is_empty()).then(|| rest.to_string());
                println!(
                    "{}",
                    if rest.is_empty() {
                        "System prompt cleared."
                    } else {
                        "System prompt set."
                    }
                );
            }
            "/reset" | "/clear" => {
                self.reset();
                println!("Conversation cleared.");
            }
            "/save" => {
                let path = Path::new(rest);
                if rest.is_empty() {
                    bail!("/save needs a file name");
                }
                let list: Vec<serde_json::Value> = self
                    .conversation()
                    .iter()
                    .map(|m| {
                        let role = match m.role {
                            Role::System => "system",
                            Role::User => "user",
                            Role::Assistant => "assistant",
                        };
                        serde_json::json!({"role": role, "content": m.content})
                    })
                    .collect();
                std::fs::write(path, serde_json::to_string_pretty(&list)? + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("Saved {} messages to {}.", list.len(), path.display());
            }
            "/load" => {
                if rest.is_empty() {
                    bail!("/load needs a file name");
                }
                let text =
                    std::fs::read_to_string(rest).with_context(|| format!("cannot read {rest}"))?;
                let loaded = parse_conversation(&text).with_context(|| rest.to_string())?;
                self.reset();
                self.system = loaded
                    .iter()
                    .find(|m| m.role == Role::System)
                    .map(|m| m.content.clone());
                self.messages = loaded
                    .into_iter()
                    .filter(|m| m.role != Role::System)
                    .collect();
                println!("Loaded {} messages.", self.messages.len());
            }
            "/set" => self.set(rest)?,
            _ => println!("Unknown command {cmd}; /help lists them."),
        }
        Ok(true)
    }

    fn set(&mut self, args: &str) -> Result<()> {
        let s = &mut self.sampling;
        let Some((name, value)) = args.split_once(' ') else {
            println!(
                "temp {} top_k {} top_p {} min_p {} repeat_penalty {} seed {} max_tokens {}",
                s.temperature,
                s.top_k,
                s.top_p,
                s.min_p,
                s.repeat_penalty,
                s.seed,
                self.max_tokens
                    .map_or("none".to_string(), |m| m.to_string())
            );
            return Ok(());
        };
        let value = value.trim();
        let mut next = s.clone();
        let bad = || format!("/set {name}: '{value}' is not a valid value");
        match name {
            "temp" | "temperature" => next.temperature = value.parse().with_context(bad)?,
            "top_k" => next.top_k = value.parse().with_context(bad)?,
            "top_p" => next.top_p = value.parse().with_context(bad)?,
            "min_p" => next.min_p = value.parse().with_context(bad)?,
            "repeat_penalty" => next.repeat_penalty = value.parse().with_context(bad)?,
            "seed" => next.seed = value.parse().with_context(bad)?,
            "max_tokens" => {
                self.max_tokens = match value {
                    "none" | "0" => None,
                    v => Some(v.parse().with_context(bad)?),
                };
                println!("max_tokens {value}");
                return Ok(());
            }
            other => bail!("/set: unknown setting '{other}' (temp, top_k, top_p, min_p, repeat_penalty, seed, max_tokens)"),
        }
        next.validate()?;
        *s = next;
        println!("{name} {value}");
        Ok(())
    }
}

/// Reads one user turn: `\` at a line's end continues it, `"""` opens and closes a block.
fn read_turn(ed: &mut rustyline::DefaultEditor) -> Result<Option<String>, ReadlineError> {
    let mut text = String::new();
    let mut block = false;
    loop {
        let prompt = if text.is_empty() && !block {
            ">>> "
        } else {
            "... "
        };
        let line = ed.readline(prompt)?;
        if line.trim() == "\"\"\"" {
            if block {
                break;
            }
            block = true;
            continue;
        }
        if block {
            text.push_str(&line);
            text.push('\n');
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                text.push_str(head);
                text.push('\n');
            }
            None => {
                text.push_str(&line);
                break;
            }
        }
    }
    if block {
        text.pop();
    }
    Ok(Some(text))
}

pub fn run(a: ChatArgs) -> Result<()> {
    let sampling = a.sampling.params()?;
    let interactive = std::io::stdin().is_terminal();
    let engine = super::load(&a.model, !interactive)?;
    let tok = engine.tokenizer()?;
    let format = ChatFormat::choose(tok, a.chat_format.as_deref())?;
    let chunk = a
        .model
        .chunk
        .unwrap_or_else(|| default_prefill_chunk(&engine.model));
    let mut chat = Chat {
        session: Session::new(&engine.model, DEFAULT_BLOCK_SIZE, chunk)?,
        engine: &engine,
        format,
        cached: Vec::new(),
        system: a.system.clone(),
        messages: Vec::new(),
        sampling,
        max_tokens: a.max_tokens,
        chunk,
    };
    let stop = Arc::new(AtomicBool::new(false));
    if !interactive {
        // `echo question | bora chat MODEL`: one answer, then exit.
        let mut question = String::new();
        std::io::stdin().read_to_string(&mut question)?;
        let question = question.trim_end_matches('\n').to_string();
        if question.trim().is_empty() {
            bail!("no question on standard input");
        }
        return chat.turn(question, &stop, false);
    }
    let mut ed = rustyline::DefaultEditor::new().context("cannot open the terminal")?;
    // After the editor: it installs signal handlers of its own, which must not replace this
    // one. While it reads a line the terminal is raw and Ctrl-C reaches it as a key.
    {
        let flag = Arc::clone(&stop);
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }
    eprintln!("Type a message; /help for commands, /bye or Ctrl-D to leave.");
    loop {
        let text = match read_turn(&mut ed) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading the terminal"),
        };
        if text.trim().is_empty() {
            continue;
        }
        ed.add_history_entry(text.as_str()).ok();
        if text.starts_with('/') {
            match chat.command(text.trim()) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    continue;
                }
            }
        }
        stop.store(false, Ordering::SeqCst);
        if let Err(e) = chat.turn(text, &stop, true) {
            eprintln!("error: {e:#}");
        }
    }
    Ok(())
}
