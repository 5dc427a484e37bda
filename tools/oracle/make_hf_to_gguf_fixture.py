#!/usr/bin/env python3
"""llama.cpp on a GGUF that `bora quantize` wrote from a safetensors folder: the oracle for
writing checkpoints (with their tokenizer) as GGUF (tests/fixtures/eval/hf_to_gguf.json and
hf_to_gguf.{f32,q8_0}.logits.f32.bin).

Usage:  python tools/oracle/make_hf_to_gguf_fixture.py   (after cargo build --release)

Input: tests/fixtures/eval/tiny_mistral (transformers' tiny Mistral, BF16, tied embeddings)
plus the Mistral v1 tokenizer.model. `bora quantize DIR OUT.gguf --type f32` and `--type q8_0`
write the files
(deterministic: the test rewrites it and checks the SHA-256 recorded here); llama.cpp
(llama-cpp-python, F32 KV cache, plain kernels) tokenizes a prompt with the file's own
vocabulary and computes its logits: the argmax of every position and the full rows of the last 4.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_gguf_llamacpp import llama_logits  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "tests/fixtures/eval/tiny_mistral"
OUT = ROOT / "tests/fixtures/eval/hf_to_gguf.json"
LAST = 4  # positions whose full logits are kept
PROMPT = "The sliding window attention of Mistral 7B, explained: Ünïcode too."


def main() -> None:
    from llama_cpp import Llama
    out: dict = {"prompt": PROMPT, "logits_of_last": LAST, "files": {}}
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "model"
        shutil.copytree(SRC, folder)
        shutil.copy(ROOT / "tests/fixtures/tokenizer_v1/tokenizer.model", folder / "tokenizer.model")
        for ftype in ["f32", "q8_0"]:
            gguf = Path(d) / f"out.{ftype}.gguf"
            subprocess.run([str(ROOT / "target/release/bora"), "quantize", str(folder), str(gguf),
                            "--type", ftype], check=True)
            llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
            ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=False)
            del llm
            logits = llama_logits(gguf, ids)
            name = f"hf_to_gguf.{ftype}.logits.f32.bin"
            logits[-LAST:].astype("<f4").tofile(OUT.parent / name)
            out["ids"] = ids
            out["files"][ftype] = {
                "sha256": hashlib.sha256(gguf.read_bytes()).hexdigest(),
                "argmax": [int(x) for x in logits.argmax(axis=1)],
                "logits_file": name,
            }
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v["sha256"] for k, v in out["files"].items()}))


if __name__ == "__main__":
    main()
