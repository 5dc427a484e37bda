//! `bora pull`, `bora list`, `bora rm`: the Hugging Face cache.

use anyhow::{bail, Result};

use crate::hub::{cache_dir, fetch, list_cache, remove, HubModel};

fn parse(spec: &str) -> Result<HubModel> {
    match HubModel::parse(spec) {
        Some(m) => Ok(m),
        None => bail!(
            "'{spec}' is not a Hub model: write hf:OWNER/REPO, hf:OWNER/REPO:FILE.gguf or a short name ({})",
            crate::hub::SHORT_NAMES.map(|(n, _)| n).join(", ")
        ),
    }
}

pub fn pull(spec: &str) -> Result<()> {
    let path = fetch(&parse(spec)?, super::quiet())?;
    println!("{}", path.display());
    Ok(())
}

pub fn list() -> Result<()> {
    let repos = list_cache()?;
    if repos.is_empty() {
        println!("no models in {}", cache_dir().display());
        return Ok(());
    }
    println!("{:<56} {:>10}  files", "model", "size");
    for r in repos {
        let mut what: Vec<String> = r
            .gguf
            .iter()
            .map(|g| format!("hf:{}:{g}", r.repo))
            .collect();
        if r.safetensors || what.is_empty() {
            what.insert(0, format!("hf:{}", r.repo));
        }
        println!(
            "{:<56} {:>10}  {}",
            r.repo,
            format!("{:.2} GB", r.bytes as f64 / 1e9),
            what.join(" ")
        );
    }
    Ok(())
}

pub fn rm(spec: &str) -> Result<()> {
    let m = parse(spec)?;
    let freed = remove(&m)?;
    println!("removed {} ({:.2} GB)", spec, freed as f64 / 1e9);
    Ok(())
}
