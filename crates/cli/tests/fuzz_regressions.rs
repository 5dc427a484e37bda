//! What the cargo-fuzz target (fuzz/fuzz_targets/gguf.rs) checks, replayed without nightly:
//! every input the fuzzer once failed on (fuzz/regressions/), and the seed files with every
//! truncation and thousands of deterministic byte changes, read as GGUF files through the
//! parser, the model config, the vocabulary and the tensors must give values or errors,
//! never a panic.

use std::path::{Path, PathBuf};

use bora::model::gguf::GgufFile;
use bora::model::mmap::MappedFile;

fn read_any(bytes: &[u8]) {
    let file = MappedFile::from_bytes(Path::new("fuzz.gguf"), bytes.to_vec());
    let Ok(g) = GgufFile::parse(file) else { return };
    let _ = bora::model::ModelConfig::from_gguf(&g);
    let _ = bora::engine::tokenizer::Tokenizer::from_gguf(&g);
    for t in g.tensors.values() {
        let b = t.bytes();
        if t.shape.len() == 1 && b.len() <= 1 << 16 {
            let _ = t.to_f32_vec();
        }
    }
}

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"));
    v.sort();
    v
}

#[test]
fn inputs_the_fuzzer_failed_on_are_handled() {
    for f in files("regressions") {
        read_any(&std::fs::read(&f).unwrap());
    }
}

#[test]
fn truncated_and_mutated_seeds_are_handled() {
    let seeds = files("seeds/gguf");
    assert!(seeds.len() >= 2, "fuzz seeds missing: {seeds:?}");
    for f in seeds {
        let seed = std::fs::read(&f).unwrap();
        // The seed itself is a valid model file.
        let g = GgufFile::parse(MappedFile::from_bytes(&f, seed.clone())).unwrap();
        assert!(bora::model::ModelConfig::from_gguf(&g).is_ok());
        for cut in 0..seed.len() {
            read_any(&seed[..cut]);
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..4000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut m = seed.clone();
            // One to three bytes changed, biased to the header where the counts and sizes are.
            for k in 0..=(state >> 62) as usize % 3 {
                let r = state.rotate_left(17 * k as u32 + 5);
                let span = if r & 1 == 0 {
                    512.min(m.len())
                } else {
                    m.len()
                };
                let at = (r >> 8) as usize % span;
                m[at] = match (r >> 40) % 4 {
                    0 => 0xFF,
                    1 => 0x00,
                    2 => m[at] ^ (1 << ((r >> 44) % 8)),
                    _ => (r >> 48) as u8,
                };
            }
            read_any(&m);
        }
    }
}
