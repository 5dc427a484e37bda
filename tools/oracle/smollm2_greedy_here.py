#!/usr/bin/env python3
"""How far llama.cpp on *this* machine follows the committed SmolLM2 greedy reference, and how
far bora does: the check behind issue #3's "greedy 64 tokens the same".

The reference (tests/fixtures/smollm2/reference.json) was made by llama-cpp-python on another
machine. Its greedy paths pass through near-ties (top-2 margins down to 0.004), so any change
in the order of f32 additions, another SIMD width included, may pick the other token there and
continue differently from then on. This script measures that for llama.cpp itself, the same
version and settings as the reference, and for a bora binary.

Usage:  python tools/oracle/smollm2_greedy_here.py [--bora target/release/bora] [path/to/model.gguf]

Prints, per prompt: the first step where llama.cpp here leaves the reference, the largest
|difference| of the prompt's last logits against the reference's, and the first step where
bora (default numerics, then `--kv-type f32`) leaves the reference and leaves llama.cpp here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_smollm2_reference import N_GREEDY, OUT, find_model, load_llama  # noqa: E402


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def llama_cpp_greedy(model: Path, prompts: list[dict]) -> list[tuple[list[int], float]]:
    llm = load_llama(model)
    out = []
    for p in prompts:
        ids = p["prompt_ids"]
        llm.reset()
        llm.eval(ids)
        cur = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
        want_last = np.fromfile(OUT / p["last_logits_file"], dtype="<f4")
        last_diff = float(np.abs(cur - want_last).max())
        greedy = []
        for _ in range(N_GREEDY):
            nxt = int(cur.argmax())
            greedy.append(nxt)
            llm.eval([nxt])
            cur = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        out.append((greedy, last_diff))
    llm.close()
    return out


def bora_greedy(bora: Path, model: Path, ids: list[int], extra: list[str]) -> list[int]:
    cmd = [str(bora), "run", str(model), "--ids", ",".join(map(str, ids)), "-n", str(N_GREEDY),
           "--temp", "0", "--print-ids", "--ignore-eos", "-q", "-t", "2", *extra]
    return [int(t) for t in subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bora", type=Path, default=Path(__file__).resolve().parents[2] / "target/release/bora")
    ap.add_argument("model", nargs="?", type=Path)
    a = ap.parse_args()
    model = a.model or find_model()
    ref = json.loads((OUT / "reference.json").read_text())
    here = llama_cpp_greedy(model, ref["prompts"])
    print(f"first step that differs from the reference (of {N_GREEDY}); reference made with "
          f"llama-cpp-python {ref['llama_cpp_python_version']}")
    print("| prompt | llama.cpp here | last-logit max |Δ| | bora | bora vs llama.cpp here "
          "| bora --kv-type f32 | its vs llama.cpp here |")
    print("|---|---|---|---|---|---|---|")
    for p, (lc, last_diff) in zip(ref["prompts"], here):
        want = p["greedy_ids"]
        cells = [repr(p["text"][:24]), str(first_difference(lc, want)), f"{last_diff:.3f}"]
        if a.bora.exists():
            for extra in ([], ["--kv-type", "f32"]):
                got = bora_greedy(a.bora, model, p["prompt_ids"], extra)
                cells += [str(first_difference(got, want)), str(first_difference(got, lc))]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
