mod bench;
mod chat;
mod eval;
mod hf_json_vocab;
mod hf_to_gguf;
mod hub;
mod inspect;
mod logits;
mod perplexity;
mod progress;
pub(crate) mod quantize;
mod run;
mod serve;
mod tokenize;

use anyhow::Result;
use bora_engine::Engine;

use crate::args::{Cli, Command, ModelArgs};

/// `--quiet`, for every command.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn dispatch(cli: Cli) -> Result<()> {
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
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
        Command::Pull(a) => hub::pull(&a.model),
        Command::List => hub::list(),
        Command::Rm(a) => hub::rm(&a.model),
        Command::Serve(a) => serve::run(a),
    }
}

/// Loads the model named on the command line and says, on stderr, what attention it uses.
pub(crate) fn load(args: &ModelArgs, quiet: bool) -> Result<Engine> {
    let quiet = quiet || self::quiet();
    args.init_threads()?;
    let path = crate::hub::resolve(&args.model, quiet)?;
    let bar = progress::Progress::new("quantizing", quiet);
    let engine = bora_engine::load_with(&path, &args.load_options(), |done, total| {
        bar.update(done, total)
    })?;
    bar.finish();
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
