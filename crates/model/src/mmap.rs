//! Read-only memory maps of checkpoint files: the only `unsafe` outside the kernels.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{ModelError, Result};

/// A checkpoint file mapped into memory. Tensors are byte ranges of it, never copies.
pub struct MappedFile {
    path: PathBuf,
    map: Option<memmap2::Mmap>,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<Arc<Self>> {
        let io = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // An empty file cannot be mapped on every platform; it is simply an empty byte slice.
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only and private to this process. bora never writes to a
            // checkpoint while it runs; a file truncated underneath us by another process is
            // outside what any mmap-based loader (llama.cpp, safetensors) can guard against.
            Some(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        };
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            map,
        }))
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
