//! `bora tokenize`: ids and pieces as the model's tokenizer gives them.

use std::io::Write;

use anyhow::Result;

use crate::args::TokenizeArgs;

pub fn run(a: TokenizeArgs) -> Result<()> {
    let tok = bora_engine::load_tokenizer(a.tokenizer.as_deref().unwrap_or(&a.model))?;
    let tok = &tok;
    let mut ids: Vec<u32> = Vec::new();
    if !a.no_bos && tok.add_bos {
        ids.extend(tok.bos);
    }
    if a.no_parse_special {
        ids.extend(tok.encode_plain(&a.text)?);
    } else {
        ids.extend(tok.encode(&a.text)?);
    }
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
