//! Read-only memory maps of checkpoint files: the only `unsafe` outside the kernels.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{ModelError, Result};

/// A checkpoint file mapped into memory. Tensors are byte ranges of it, never copies.
pub struct MappedFile {
    path: PathBuf,
    backing: Backing,
}

enum Backing {
    Map(memmap2::Mmap),
    /// Bytes already in memory (an empty file, or bytes handed over by a test or fuzzer).
    Owned(Vec<u8>),
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
        let backing = if len == 0 {
            Backing::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and private to this process. bora never writes to a
            // checkpoint while it runs; a file truncated underneath us by another process is
            // outside what any mmap-based loader (llama.cpp, safetensors) can guard against.
            Backing::Map(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        };
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            backing,
        }))
    }

    /// Bytes that are already in memory, read as if they were the file `path`.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Arc<Self> {
        Arc::new(Self {
            path: path.to_path_buf(),
            backing: Backing::Owned(bytes),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Map(m) => m,
            Backing::Owned(b) => b,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
