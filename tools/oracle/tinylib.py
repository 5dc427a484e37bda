"""Shared helpers for the tiny-model oracle scripts (make_tiny_models.py, convert_gguf.py).

Everything here runs on CPU in float32 with eager attention and (for Mixtral) the
eager per-expert loop, single-threaded, so that the outputs are reproducible.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_DIR = REPO_ROOT / "tests" / "fixtures" / "tiny"

VOCAB = 256
PROMPT_LEN = 64  # length of the logits prompt
GREEDY_PROMPT_LEN = 8
GREEDY_NEW = 120

# Seed of the 64-token logits prompt, shared by all models. (Greedy prompt seeds are
# searched per model in make_tiny_models.py.)
LOGITS_PROMPT_SEED = 1234


def setup_torch() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)


def random_ids(seed: int, n: int, vocab: int = VOCAB) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


@torch.no_grad()
def full_logits(model, ids: list[int]) -> np.ndarray:
    """Logits of every position, one full forward without any cache."""
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].float().numpy().astype(np.float32)


@torch.no_grad()
def greedy_full_recompute(model, prompt: list[int], n_new: int) -> tuple[list[int], float, list[float]]:
    """Greedy decoding where every step recomputes the whole sequence (no KV cache).

    Returns (generated_ids, min_margin, margins) where margin = top1 - top2 logit at
    the position whose argmax is taken.
    """
    seq = list(prompt)
    gen: list[int] = []
    margins: list[float] = []
    for _ in range(n_new):
        out = model(input_ids=torch.tensor([seq], dtype=torch.long), use_cache=False)
        last = out.logits[0, -1].float()
        top2 = torch.topk(last, 2)
        nxt = int(top2.indices[0])
        margins.append(float(top2.values[0] - top2.values[1]))
        gen.append(nxt)
        seq.append(nxt)
    return gen, min(margins), margins


def write_f32(path: Path, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr, dtype="<f4")
    path.write_bytes(arr.tobytes())


def write_json(path: Path, obj) -> None:
    from jsonfmt import write

    write(path, obj)


def load_hf(model_dir: Path):
    """Load a saved tiny checkpoint as float32 with eager attention / eager experts."""
    from transformers import AutoModelForCausalLM

    kwargs = dict(attn_implementation="eager", dtype=torch.float32)
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") == "mixtral":
        kwargs["experts_implementation"] = "eager"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    model.eval()
    return model


@torch.no_grad()
def quant_roundtrip_model(model, qtype):
    """Deep copy of `model` whose weight matrices (every >=2-D parameter except the MoE
    router) are replaced by gguf.quants.dequantize(gguf.quants.quantize(w)). Quantization
    blocks run along the last (input) dimension, so this equals what the GGUF files hold
    after un-permuting Q/K (the permutation only reorders rows)."""
    import copy

    import gguf

    m = copy.deepcopy(model)
    for name, p in m.named_parameters():
        if p.dim() < 2 or name.endswith("mlp.gate.weight"):
            continue
        w = p.data.float().numpy()
        dq = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype).reshape(w.shape)
        p.data.copy_(torch.from_numpy(np.ascontiguousarray(dq, dtype=np.float32)))
    return m
