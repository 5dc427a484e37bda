//! `bora run`: generate after a prompt, streaming text (or ids) to stdout.

use std::io::{StdoutLock, Write};
use std::ops::ControlFlow;

use anyhow::{bail, Result};
use bora_engine::{
    default_prefill_chunk, generate, Engine, GenerateOptions, GenerationStats, StreamDecoder,
    Tokenizer,
};

use crate::args::{parse_ids, RunArgs};

pub fn run(a: RunArgs) -> Result<()> {
    let sampling = a.sampling()?;
    let engine = super::load(&a.model, false)?;
    let prompt = match (&a.ids, &a.prompt) {
        (Some(ids), _) => parse_ids(ids)?,
        (None, Some(text)) => engine.tokenizer()?.encode_prompt(text)?,
        (None, None) => bail!("give a prompt with -p TEXT or --ids 1,2,3"),
    };
    let opts = GenerateOptions {
        max_new_tokens: a.n_predict,
        prefill_chunk: a
            .model
            .chunk
            .unwrap_or_else(|| default_prefill_chunk(&engine.model)),
        block_size: a.block_size,
        sampling,
        stop_tokens: if a.ignore_eos {
            vec![]
        } else {
            engine.stop_tokens()
        },
    };
    let mut sink = Sink::new(&a, &engine, &prompt)?;
    let stats = generate(&engine.model, &prompt, &opts, |id| sink.push(id))?;
    sink.finish()?;
    report(&stats);
    Ok(())
}

/// Where generated tokens go: decoded text streamed as it completes, or one line of ids.
enum Sink<'t> {
    Ids(Vec<u32>),
    Text {
        tok: &'t Tokenizer,
        stream: StreamDecoder,
        out: StdoutLock<'static>,
        /// The write error that stopped generation, reported after it.
        error: Option<std::io::Error>,
    },
}

impl<'t> Sink<'t> {
    fn new(a: &RunArgs, engine: &'t Engine, prompt: &[u32]) -> Result<Self> {
        // Token ids in without a tokenizer: ids out.
        if a.print_ids || (a.ids.is_some() && engine.tokenizer.is_none()) {
            return Ok(Sink::Ids(Vec::new()));
        }
        let mut out = std::io::stdout().lock();
        if let Some(text) = &a.prompt {
            write!(out, "{text}")?;
            out.flush()?;
        }
        Ok(Sink::Text {
            tok: engine.tokenizer()?,
            stream: StreamDecoder::new(prompt),
            out,
            error: None,
        })
    }

    /// Takes a token; breaks once stdout is gone, so generation stops with it.
    fn push(&mut self, id: u32) -> ControlFlow<()> {
        match self {
            Sink::Ids(ids) => ids.push(id),
            Sink::Text {
                tok,
                stream,
                out,
                error,
            } => {
                if let Some(piece) = stream.push(tok, id) {
                    if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                        error.get_or_insert(e);
                        return ControlFlow::Break(());
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn finish(self) -> Result<()> {
        match self {
            Sink::Ids(ids) => {
                let line: Vec<String> = ids.iter().map(u32::to_string).collect();
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", line.join(" "))?;
                out.flush()?;
            }
            Sink::Text {
                tok,
                mut stream,
                mut out,
                error,
            } => {
                if let Some(e) = error {
                    return Err(e.into());
                }
                if let Some(rest) = stream.flush(tok) {
                    write!(out, "{rest}")?;
                }
                writeln!(out)?;
                out.flush()?;
            }
        }
        Ok(())
    }
}

/// The last line on stderr: prompt and generation speed.
fn report(stats: &GenerationStats) {
    eprintln!(
        "prompt: {} tokens, {:.1} tokens/s | generated: {} tokens, {:.1} tokens/s{}",
        stats.prompt_tokens,
        stats.prompt_tokens_per_s(),
        stats.generated_tokens,
        stats.generated_tokens_per_s(),
        if stats.stopped {
            " (end of sequence)"
        } else {
            ""
        }
    );
}
