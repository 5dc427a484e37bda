//! Opening a checkpoint: a Hugging Face folder (config.json + safetensors, sharded or not) or a
//! GGUF file. Either way the result is a config and a directory of mapped tensors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::names::Format;
use crate::safetensors;
use crate::tensor::TensorRef;

pub struct Checkpoint {
    pub path: PathBuf,
    pub format: Format,
    pub config: ModelConfig,
    pub tensors: BTreeMap<String, TensorRef>,
    /// The GGUF file itself, for its tokenizer metadata (its tensors moved to `tensors`).
    pub gguf: Option<GgufFile>,
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(ModelError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            });
        }
        if path.is_dir() {
            return Self::open_hf_folder(path);
        }
        let mut magic = [0u8; 4];
        let io = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let n = std::io::Read::read(&mut std::fs::File::open(path).map_err(io)?, &mut magic)
            .map_err(io)?;
        if n == 4 && &magic == b"GGUF" {
            let mut g = GgufFile::open(path)?;
            let config = ModelConfig::from_gguf(&g)?;
            // The checkpoint owns the directory; the GGUF file stays for its metadata.
            let tensors = std::mem::take(&mut g.tensors);
            return Ok(Self {
                path: path.to_path_buf(),
                format: Format::Gguf,
                config,
                tensors,
                gguf: Some(g),
            });
        }
        if path.extension().is_some_and(|e| e == "gguf") {
            return Err(ModelError::format(
                path,
                format!("bad magic {magic:?}: not a GGUF file"),
            ));
        }
        Err(ModelError::UnknownFormat {
            path: path.to_path_buf(),
        })
    }

    fn open_hf_folder(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let params = dir.join("params.json");
        if !config_path.exists() && params.exists() {
            return Self::open_native_folder(dir, &params);
        }
        let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config = ModelConfig::from_hf_json(&text, &config_path.display().to_string())?;
        let tensors = read_tensors(&safetensors_files(dir)?)?;
        Ok(Self {
            path: dir.to_path_buf(),
            format: Format::Hf,
            config,
            tensors,
            gguf: None,
        })
    }

    /// Mistral's native layout: params.json and `consolidated*.safetensors`.
    fn open_native_folder(dir: &Path, params: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(params).map_err(|source| ModelError::Io {
            path: params.to_path_buf(),
            source,
        })?;
        let config = ModelConfig::from_params_json(&text, &params.display().to_string())?;
        let files = files_where(dir, |name| {
            name.starts_with("consolidated") && name.ends_with(".safetensors")
        })?;
        if files.is_empty() {
            return Err(ModelError::format(
                dir,
                "params.json but no consolidated*.safetensors (Mistral's .pth checkpoints are not read)",
            ));
        }
        let tensors = read_tensors(&files)?;
        Ok(Self {
            path: dir.to_path_buf(),
            format: Format::Native,
            config,
            tensors,
            gguf: None,
        })
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorRef> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }
}

/// The weight files of an HF folder: those the index names, else model.safetensors, else all.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
            path: index.clone(),
            source,
        })?;
        let j: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::format(&index, format!("not valid JSON: {e}")))?;
        let map = j
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::format(&index, "no 'weight_map' object"))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        for f in &files {
            if f.contains("..") || f.starts_with('/') {
                return Err(ModelError::format(
                    &index,
                    format!("weight file '{f}' escapes the folder"),
                ));
            }
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let files = files_where(dir, |name| name.ends_with(".safetensors"))?;
    if files.is_empty() {
        return Err(ModelError::format(
            dir,
            "no *.safetensors weight files in this folder",
        ));
    }
    Ok(files)
}

/// The files of `dir` whose names pass `keep`, sorted.
fn files_where(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&keep))
        .collect();
    files.sort();
    Ok(files)
}

/// Every tensor of the weight files, refusing a name that two files both hold.
fn read_tensors(files: &[PathBuf]) -> Result<BTreeMap<String, TensorRef>> {
    let mut tensors = BTreeMap::new();
    for file in files {
        for (name, t) in safetensors::read_directory(file)? {
            if tensors.contains_key(&name) {
                return Err(ModelError::Tensor {
                    path: file.clone(),
                    name,
                    msg: "is also in another weight file".to_string(),
                });
            }
            tensors.insert(name, t);
        }
    }
    Ok(tensors)
}
