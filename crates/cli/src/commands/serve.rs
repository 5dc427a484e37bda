//! `bora serve`: loads the model and hands it to the HTTP server crate.

use anyhow::Result;
use bora_server::ServerConfig;

use crate::args::ServeArgs;

pub fn run(a: ServeArgs) -> Result<()> {
    let engine = super::load(&a.model, false)?;
    let model_name = a
        .model
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bora".into());
    let config = ServerConfig {
        host: a.host,
        port: a.port,
        parallel: a.parallel,
        step_tokens: a.batch,
        kv_memory_bytes: a.kv_memory_mib.map(|mib| (mib as usize) << 20),
        prefix_caching: !a.no_prefix_caching,
        max_queue: a.max_queue,
        api_key: a.api_key,
        model_name,
    };
    bora_server::serve(engine, config)?;
    Ok(())
}
