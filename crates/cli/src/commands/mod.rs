mod bench;
mod chat;
mod eval;
mod inspect;
mod logits;
mod perplexity;
mod progress;
pub(crate) mod quantize;
mod run;
mod tokenize;

use anyhow::Result;
use bora_engine::Engine;

use crate::args::{Cli, Command, ModelArgs};

pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => run::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Chat(a) => chat::run(a),
    }
}

/// Loads the model named on the command line and says, on stderr, what attention it uses.
pub(crate) fn load(args: &ModelArgs, quiet: bool) -> Result<Engine> {
    args.init_threads()?;
    let engine = bora_engine::load(&args.model, &args.load_options())?;
    if !quiet {
        let c = &engine.model.config;
        let attention = match c.sliding_window {
            Some(w) => format!("sliding window {w}"),
            None => "full attention (no sliding window)".to_string(),
        };
        let experts = c
            .moe
            .map(|m| format!(", {} experts top-{}", m.n_experts, m.top_k))
            .unwrap_or_default();
        eprintln!(
            "bora: {}: {:?}, {} layers, {} heads / {} KV heads{experts}, {attention}, context {}",
            args.model.display(),
            c.arch,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.max_context
        );
    }
    Ok(engine)
}
