//! Models from the Hugging Face Hub: `hf:OWNER/REPO` (a safetensors checkpoint) or
//! `hf:OWNER/REPO:FILE.gguf`, and short names for well-known checkpoints. Files go into the
//! Hugging Face cache (`HF_HOME`, default ~/.cache/huggingface; `HF_ENDPOINT` for a mirror),
//! laid out as the Python tools lay it out, so what they downloaded is reused and the other
//! way round. Downloads resume from a partial file, show a progress bar on a terminal, and
//! are checked against the SHA-256 the Hub gives for large files.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

/// Short names people type, and the repositories they mean.
pub const SHORT_NAMES: [(&str, &str); 8] = [
    ("mistral-7b", "mistralai/Mistral-7B-v0.1"),
    ("mistral-7b-instruct", "mistralai/Mistral-7B-Instruct-v0.3"),
    (
        "mistral-7b-instruct-v0.1",
        "mistralai/Mistral-7B-Instruct-v0.1",
    ),
    (
        "mistral-7b-instruct-v0.2",
        "mistralai/Mistral-7B-Instruct-v0.2",
    ),
    ("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1"),
    (
        "mixtral-8x7b-instruct",
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
    ),
    (
        "mistral-nemo-instruct",
        "mistralai/Mistral-Nemo-Instruct-2407",
    ),
    (
        "smollm2-135m-instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
];

/// A model named on the Hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubModel {
    pub repo: String,
    /// One GGUF file of the repository, or None for its safetensors checkpoint.
    pub file: Option<String>,
}

impl HubModel {
    /// `hf:OWNER/REPO[:FILE]` or a short name; None for anything else (a local path).
    pub fn parse(spec: &str) -> Option<Self> {
        if let Some(rest) = spec.strip_prefix("hf:") {
            let (repo, file) = match rest.split_once(':') {
                Some((r, f)) => (r, Some(f.to_string())),
                None => (rest, None),
            };
            return Some(Self {
                repo: repo.to_string(),
                file,
            });
        }
        SHORT_NAMES
            .iter()
            .find(|(n, _)| *n == spec)
            .map(|(_, repo)| Self {
                repo: repo.to_string(),
                file: None,
            })
    }

    fn check(&self) -> Result<()> {
        let ok = |s: &str| safe_name(s);
        let parts: Vec<&str> = self.repo.split('/').collect();
        if parts.len() != 2 || !parts.iter().all(|p| ok(p)) {
            bail!(
                "'{}' is not a Hub repository: write hf:OWNER/REPO",
                self.repo
            );
        }
        if let Some(f) = &self.file {
            if !ok(f) {
                bail!("'{f}' is not a file name in {}", self.repo);
            }
        }
        Ok(())
    }
}

/// A file name inside a repository: relative, no `..`, no backslashes or NULs.
fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('/')
        && !s.contains('\\')
        && !s.contains('\0')
        && s.split('/').all(|c| !c.is_empty() && c != "..")
}

/// The path a model argument stands for: local paths as they are; Hub models from the cache,
/// downloaded first when missing.
pub fn resolve(model: &Path, quiet: bool) -> Result<PathBuf> {
    let spec = model.to_string_lossy();
    if model.exists() {
        return Ok(model.to_path_buf());
    }
    match HubModel::parse(&spec) {
        Some(m) => fetch(&m, quiet),
        None => Ok(model.to_path_buf()),
    }
}

/// Downloads what is missing of `m` into the cache; returns the GGUF file or the snapshot
/// folder.
pub fn fetch(m: &HubModel, quiet: bool) -> Result<PathBuf> {
    m.check()?;
    // Whole in the cache already: no network needed.
    if m.file.is_none() {
        if let Some(dir) = complete_snapshot(m) {
            return Ok(dir);
        }
    }
    if let Some(f) = &m.file {
        return get(m, f, quiet);
    }
    // Transformers' layout, else Mistral's native one (params.json, consolidated weights).
    let config = match get(m, "config.json", quiet) {
        Ok(p) => p,
        Err(e) if is_not_found(&e) => return fetch_native(m, quiet),
        Err(e) => return Err(e),
    };
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "model.safetensors.index.json",
    ] {
        optional(m, f, quiet)?;
    }
    let snapshot = config
        .parent()
        .context("the cache gave a file without a folder")?
        .to_path_buf();
    // The weights: the shards the index names, else one model.safetensors.
    let index = snapshot.join("model.safetensors.index.json");
    let weights: Vec<String> = if index.exists() {
        let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index)?)
            .with_context(|| format!("{}: not JSON", index.display()))?;
        let mut names: Vec<String> = j["weight_map"]
            .as_object()
            .context("model.safetensors.index.json has no weight_map")?
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        if let Some(bad) = names.iter().find(|n| !safe_name(n)) {
            bail!(
                "{}: the index names a weight file '{bad}' outside the repository",
                index.display()
            );
        }
        names
    } else {
        vec!["model.safetensors".into()]
    };
    for w in &weights {
        get(m, w, quiet)?;
    }
    Ok(snapshot)
}

/// A file the repository may lack: fetched when there, nothing when the Hub says 404.
fn optional(m: &HubModel, file: &str, quiet: bool) -> Result<Option<PathBuf>> {
    match get(m, file, quiet) {
        Ok(p) => Ok(Some(p)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A repository in Mistral's native layout: params.json, its tokenizer file and the
/// consolidated weights.
fn fetch_native(m: &HubModel, quiet: bool) -> Result<PathBuf> {
    let params = match get(m, "params.json", quiet) {
        Ok(p) => p,
        Err(e) if is_not_found(&e) => bail!(
            "{} has neither config.json nor params.json: not a checkpoint bora can load (for a GGUF file, name it: hf:{}:FILE.gguf)",
            m.repo,
            m.repo
        ),
        Err(e) => return Err(e),
    };
    let mut tokenizer = false;
    for f in [
        "tekken.json",
        "tokenizer.model.v7",
        "tokenizer.model.v3",
        "tokenizer.model.v1",
        "tokenizer.model",
    ] {
        if optional(m, f, quiet)?.is_some() {
            tokenizer = true;
            break;
        }
    }
    if !tokenizer {
        eprintln!(
            "bora: warning: {} has no tekken.json or tokenizer.model.vN",
            m.repo
        );
    }
    get(m, "consolidated.safetensors", quiet)?;
    Ok(params
        .parent()
        .context("the cache gave a file without a folder")?
        .to_path_buf())
}

/// The cached snapshot of a safetensors checkpoint when its config and every weight file are
/// there (optional files such as tokenizer_config.json may be absent upstream).
fn complete_snapshot(m: &HubModel) -> Option<PathBuf> {
    let cache = Cache::from_env().model(m.repo.clone());
    let config = cache
        .get("config.json")
        .or_else(|| cache.get("params.json"))?;
    let dir = config.parent()?.to_path_buf();
    if config.ends_with("params.json") {
        return dir.join("consolidated.safetensors").exists().then_some(dir);
    }
    let index = dir.join("model.safetensors.index.json");
    let complete = if index.exists() {
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&index).ok()?).ok()?;
        j["weight_map"]
            .as_object()?
            .values()
            .filter_map(|v| v.as_str())
            .all(|f| dir.join(f).exists())
    } else {
        dir.join("model.safetensors").exists()
    };
    complete.then_some(dir)
}

/// Whether the Hub said the file is not there (404), as opposed to being unreachable.
fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<ApiError>().is_some_and(|a| {
            matches!(a, ApiError::RequestError(r) if matches!(**r, ureq::Error::Status(404, _)))
        })
    })
}

/// One file: from the cache when it is there, else downloaded (resuming a partial one) and
/// checked.
fn get(m: &HubModel, file: &str, quiet: bool) -> Result<PathBuf> {
    let cache = Cache::from_env();
    if let Some(p) = cache.model(m.repo.clone()).get(file) {
        return Ok(p);
    }
    let mut builder = ApiBuilder::from_env();
    // hf-hub reads the token `huggingface-cli login` saved; HF_TOKEN, as the Python tools
    // honour it, comes first.
    if let Some(t) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(t));
    }
    let api = builder
        .with_progress(false)
        .with_retries(2)
        .build()
        .context("cannot set up the Hub client")?;
    let repo = api.repo(Repo::model(m.repo.clone()));
    let bar = Bar::new(quiet);
    let path = repo.download_with_progress(file, bar).map_err(|e| {
        let reach = match &e {
            ApiError::RequestError(r) if matches!(**r, ureq::Error::Transport(_)) => true,
            ApiError::TooManyRetries(_) => true,
            _ => false,
        };
        if reach {
            anyhow::anyhow!(
                "cannot reach the Hugging Face Hub ({}) to fetch {}/{file}: {e}. Without network, download the files elsewhere and pass their path, or set HF_ENDPOINT to a mirror",
                std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into()),
                m.repo
            )
        } else {
            anyhow::Error::new(e).context(format!("fetching {}/{file} from the Hub", m.repo))
        }
    })?;
    verify(&path).inspect_err(|_| {
        // A corrupt blob must not be found in the cache next time.
        if let Ok(blob) = std::fs::canonicalize(&path) {
            std::fs::remove_file(blob).ok();
        }
        std::fs::remove_file(&path).ok();
    })?;
    Ok(path)
}

/// Large files are stored under their SHA-256 (the Hub's ETag for LFS files): check it.
fn verify(path: &Path) -> Result<()> {
    let blob = std::fs::canonicalize(path)?;
    let name = blob.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(()); // a small file: its ETag is not a content hash
    }
    let mut f = std::fs::File::open(&blob)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if !got.eq_ignore_ascii_case(name) {
        bail!(
            "{}: checksum mismatch (SHA-256 {got}, the Hub says {name}); the download was removed, try again",
            path.display()
        );
    }
    Ok(())
}

/// hf-hub's progress callbacks on an indicatif bar, drawn only on a terminal.
struct Bar(ProgressBar);

impl Bar {
    fn new(quiet: bool) -> Self {
        let target = if quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        if let Ok(s) = ProgressStyle::with_template(
            "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} (ETA {eta})",
        ) {
            bar.set_style(s);
        }
        Self(bar)
    }
}

impl hf_hub::api::Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.set_length(size as u64);
        self.0.set_message(filename.to_string());
    }

    fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }

    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Where the cache is: $HF_HOME/hub, default ~/.cache/huggingface/hub.
pub fn cache_dir() -> PathBuf {
    Cache::from_env().path().clone()
}

/// A repository in the cache.
pub struct CachedRepo {
    pub repo: String,
    pub dir: PathBuf,
    pub bytes: u64,
    /// GGUF files of its snapshots.
    pub gguf: Vec<String>,
    pub safetensors: bool,
}

/// Every model repository in the cache.
pub fn list_cache() -> Result<Vec<CachedRepo>> {
    let dir = cache_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("models--") else {
            continue;
        };
        let repo = id.replacen("--", "/", 1);
        let bytes = dir_size(&e.path().join("blobs"));
        let (mut gguf, mut safetensors) = (Vec::new(), false);
        if let Ok(snaps) = std::fs::read_dir(e.path().join("snapshots")) {
            for s in snaps.filter_map(|s| s.ok()) {
                for f in std::fs::read_dir(s.path())
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.ok())
                {
                    let n = f.file_name().to_string_lossy().into_owned();
                    if n.ends_with(".gguf") && !gguf.contains(&n) {
                        gguf.push(n);
                    } else if n.ends_with(".safetensors") {
                        safetensors = true;
                    }
                }
            }
        }
        gguf.sort();
        out.push(CachedRepo {
            repo,
            dir: e.path(),
            bytes,
            gguf,
            safetensors,
        });
    }
    out.sort_by(|a, b| a.repo.cmp(&b.repo));
    Ok(out)
}

/// (link, canonical target) of every file under a snapshot folder.
fn collect_links(dir: &Path, out: &mut Vec<(PathBuf, PathBuf)>) {
    for e in std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
    {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            collect_links(&p, out);
        } else if let Ok(target) = std::fs::canonicalize(&p) {
            out.push((p, target));
        }
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Removes a repository from the cache, or one GGUF file of it (its blob too, unless
/// another snapshot points at it).
pub fn remove(m: &HubModel) -> Result<u64> {
    m.check()?;
    let repo_dir = cache_dir().join(format!("models--{}", m.repo.replace('/', "--")));
    if !repo_dir.exists() {
        bail!("{} is not in the cache ({})", m.repo, cache_dir().display());
    }
    let Some(file) = &m.file else {
        let bytes = dir_size(&repo_dir.join("blobs"));
        std::fs::remove_dir_all(&repo_dir)
            .with_context(|| format!("cannot remove {}", repo_dir.display()))?;
        return Ok(bytes);
    };
    let repo_dir = std::fs::canonicalize(&repo_dir)?;
    // Every link of every snapshot, and the blob each points at.
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    let snapshots: Vec<PathBuf> = std::fs::read_dir(repo_dir.join("snapshots"))?
        .filter_map(|s| s.ok().map(|s| s.path()))
        .collect();
    for s in &snapshots {
        collect_links(s, &mut links);
    }
    let doomed: Vec<&(PathBuf, PathBuf)> = links
        .iter()
        .filter(|(link, _)| snapshots.iter().any(|s| *link == s.join(file)))
        .collect();
    if doomed.is_empty() {
        bail!("{file} is not in the cached {}", m.repo);
    }
    let mut freed = 0;
    for (link, blob) in &doomed {
        std::fs::remove_file(link)?;
        // The blob goes only when no other link (another snapshot, another name) keeps it.
        let still_used = links
            .iter()
            .any(|(l, b)| b == blob && !doomed.iter().any(|(d, _)| d == l));
        if !still_used && blob.starts_with(&repo_dir) && blob.exists() {
            freed += std::fs::metadata(blob).map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(blob).ok();
        }
    }
    Ok(freed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_are_refused() {
        assert_eq!(
            HubModel::parse("hf:TheBloke/Mistral-GGUF:mistral.Q4_0.gguf"),
            Some(HubModel {
                repo: "TheBloke/Mistral-GGUF".into(),
                file: Some("mistral.Q4_0.gguf".into())
            })
        );
        assert_eq!(
            HubModel::parse("mistral-7b-instruct").unwrap().repo,
            "mistralai/Mistral-7B-Instruct-v0.3"
        );
        assert_eq!(HubModel::parse("./model.gguf"), None);
        assert!(HubModel::parse("hf:justone").unwrap().check().is_err());
        assert!(HubModel::parse("hf:a/b:../../etc/passwd")
            .unwrap()
            .check()
            .is_err());
        assert!(HubModel::parse("hf:a/b:/etc/passwd")
            .unwrap()
            .check()
            .is_err());
        assert!(HubModel::parse("hf:a/b:sub/ok.gguf")
            .unwrap()
            .check()
            .is_ok());
        assert!(!safe_name("a//b") && !safe_name("a/../b"));
        assert!(safe_name("model-00001-of-00002.safetensors"));
    }
}
