//! Any bytes, read as a GGUF file: parsing, the model config, the vocabulary, and every
//! tensor's bytes must give a value or an error, never a panic or an out-of-bounds read.
#![no_main]

use std::path::Path;

use bora_model::gguf::GgufFile;
use bora_model::mmap::MappedFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let file = MappedFile::from_bytes(Path::new("fuzz.gguf"), data.to_vec());
    let Ok(g) = GgufFile::parse(file) else { return };
    let _ = bora_model::ModelConfig::from_gguf(&g);
    let _ = bora_engine::Tokenizer::from_gguf(&g);
    for t in g.tensors.values() {
        let bytes = t.bytes();
        // Small tensors are decoded whole, as norms are at load.
        if t.shape.len() == 1 && bytes.len() <= 1 << 16 {
            let _ = t.to_f32_vec();
        }
    }
});
