//! `bora run`: generate after a prompt, streaming text (or ids) to stdout.

use std::io::Write;

use anyhow::{bail, Result};
use bora_engine::{default_prefill_chunk, generate, GenerateOptions, StreamDecoder};

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
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // Token ids in without a tokenizer: ids out.
    let ids_only = a.print_ids || (a.ids.is_some() && engine.tokenizer.is_none());
    let tokenizer = if ids_only {
        None
    } else {
        Some(engine.tokenizer()?)
    };
    let mut stream = StreamDecoder::new(&prompt);
    if let (Some(_), Some(text)) = (tokenizer, &a.prompt) {
        write!(out, "{text}")?;
        out.flush()?;
    }
    let mut ids = Vec::new();
    let mut write_err = None;
    let stats = generate(&engine.model, &prompt, &opts, |id| match tokenizer {
        None => ids.push(id),
        Some(tok) => {
            if let Some(piece) = stream.push(tok, id) {
                if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                    write_err.get_or_insert(e);
                }
            }
        }
    })?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    match tokenizer {
        None => {
            let line: Vec<String> = ids.iter().map(u32::to_string).collect();
            writeln!(out, "{}", line.join(" "))?;
        }
        Some(tok) => {
            if let Some(rest) = stream.flush(tok) {
                write!(out, "{rest}")?;
            }
            writeln!(out)?;
        }
    }
    out.flush()?;
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
    Ok(())
}
