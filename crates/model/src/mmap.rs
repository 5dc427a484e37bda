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

/// Asks Linux to read the file into 2 MiB page-cache pages where it reads it from disk, so
/// that the map can use 2 MiB TLB entries. Decode streams every weight once per token: mapped
/// with 4 KiB pages, the page walks cost 10–15% of a Q4_0 matrix-vector product's read
/// rate from memory (`matvec_speed`, 2 threads), and decode's. Without the advice, the
/// page faults of a first run read the file in small pages, and they stay so while it is
/// cached. Only a hint: a kernel without transparent huge pages refuses it, and the file
/// is then read as before.
#[cfg(target_os = "linux")]
fn ask_for_huge_pages(map: &memmap2::Mmap) {
    let _ = map.advise(memmap2::Advice::HugePage);
}

#[cfg(not(target_os = "linux"))]
fn ask_for_huge_pages(_: &memmap2::Mmap) {}

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
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            ask_for_huge_pages(&map);
            Backing::Map(map)
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
