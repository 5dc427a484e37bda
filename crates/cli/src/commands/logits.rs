//! `bora logits`: the model's raw logits, for comparing numerics with other implementations.

use std::io::Write;

use anyhow::{bail, Result};
use bora_engine::{default_prefill_chunk, Session};
use bora_model::{LogitsRows, DEFAULT_BLOCK_SIZE};

use crate::args::{parse_ids, LogitsArgs};

pub fn run(a: LogitsArgs) -> Result<()> {
    let engine = super::load(&a.model, a.json)?;
    let ids = match (&a.ids, &a.text) {
        (Some(ids), _) => parse_ids(ids)?,
        (None, Some(text)) => engine.tokenizer()?.encode_prompt(text)?,
        (None, None) => bail!("give the input with --ids 1,2,3 or --text TEXT"),
    };
    if ids.is_empty() {
        bail!("the input is empty: it tokenizes to no tokens");
    }
    let limit = engine.model.config.max_context;
    if ids.len() > limit {
        bail!(
            "{} tokens exceed the context limit of {limit} tokens",
            ids.len()
        );
    }
    let chunk = a
        .model
        .chunk
        .unwrap_or_else(|| default_prefill_chunk(&engine.model));
    let mut session = Session::new(&engine.model, DEFAULT_BLOCK_SIZE, chunk)?;
    let flat = session.prefill(
        &ids,
        chunk,
        if a.all {
            LogitsRows::All
        } else {
            LogitsRows::Last
        },
    )?;
    let vocab = engine.model.config.vocab_size;
    let rows: Vec<&[f32]> = flat.chunks_exact(vocab).collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.json {
        let obj = serde_json::json!({ "ids": ids, "logits": rows });
        serde_json::to_writer(&mut out, &obj)?;
        writeln!(out)?;
        return Ok(());
    }
    let first_pos = if a.all { 0 } else { ids.len() - 1 };
    for (i, row) in rows.iter().enumerate() {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
        let top: Vec<String> = idx
            .iter()
            .take(5)
            .map(|&j| format!("{j}:{:.4}", row[j]))
            .collect();
        writeln!(
            out,
            "position {} (token {}): top {}",
            first_pos + i,
            ids[first_pos + i],
            top.join(" ")
        )?;
    }
    Ok(())
}
