//! `bora tokenize`: ids and pieces as the model's tokenizer gives them, for a text or for a
//! conversation in the model's instruct format.

use std::io::Write;

use anyhow::{bail, Context, Result};
use bora_engine::chat::{parse_conversation, ChatFormat};

use crate::args::TokenizeArgs;

pub fn run(a: TokenizeArgs) -> Result<()> {
    let source = a
        .tokenizer
        .as_deref()
        .or(a.model.as_deref())
        .context("give a model or --tokenizer FILE")?;
    let source = crate::hub::resolve(source, super::quiet())?;
    let tok = bora_engine::load_tokenizer(&source)?;
    let tok = &tok;
    let ids = match (&a.chat, &a.text) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let messages =
                parse_conversation(&text).with_context(|| format!("{}", file.display()))?;
            ChatFormat::choose(tok, a.chat_format.as_deref())?.encode(tok, &messages)?
        }
        (None, Some(text)) => {
            let mut ids: Vec<u32> = Vec::new();
            if !a.no_bos && tok.add_bos {
                ids.extend(tok.bos);
            }
            if a.no_parse_special {
                ids.extend(tok.encode_plain(text)?);
            } else {
                ids.extend(tok.encode(text)?);
            }
            ids
        }
        (None, None) => bail!("give --text TEXT or --chat conversation.json"),
    };
    let pieces: Vec<String> = ids.iter().map(|&id| tok.piece(id)).collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.json {
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({ "ids": ids, "pieces": pieces }),
        )?;
        writeln!(out)?;
    } else {
        for (id, p) in ids.iter().zip(&pieces) {
            writeln!(out, "{id:>8} {p:?}")?;
        }
    }
    Ok(())
}
