#!/usr/bin/env python3
"""Mistral's native checkpoint layout (as mistral-inference reads it): `params.json` +
`consolidated.safetensors`, Mistral's tensor names, and Q/K rows in the original interleaved
RoPE order that transformers' conversion script permutes away.

Usage:  python tools/oracle/make_native_fixture.py   (after make_tiny_models.py)

Writes tests/fixtures/tiny/mistral_swa_native/ from tests/fixtures/tiny/mistral_swa/: the same
weights, renamed, Q/K un-permuted (the inverse of transformers' `permute`, the same rows
llama.cpp's converter writes to GGUF). Its oracle is mistral_swa's own reference logits
(transformers), since it is the same model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.numpy import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_gguf import permute  # noqa: E402  (HF rows -> interleaved rows)

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "tests/fixtures/tiny/mistral_swa"
DST = ROOT / "tests/fixtures/tiny/mistral_swa_native"


def main() -> None:
    cfg = json.loads((SRC / "config.json").read_text())
    t = load_file(str(SRC / "model.safetensors"))
    n_heads, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    out = {
        "tok_embeddings.weight": t["model.embed_tokens.weight"],
        "norm.weight": t["model.norm.weight"],
        "output.weight": t["lm_head.weight"],
    }
    for i in range(cfg["num_hidden_layers"]):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        out[q + "attention_norm.weight"] = t[p + "input_layernorm.weight"]
        out[q + "attention.wq.weight"] = permute(t[p + "self_attn.q_proj.weight"], n_heads)
        out[q + "attention.wk.weight"] = permute(t[p + "self_attn.k_proj.weight"], n_kv)
        out[q + "attention.wv.weight"] = t[p + "self_attn.v_proj.weight"]
        out[q + "attention.wo.weight"] = t[p + "self_attn.o_proj.weight"]
        out[q + "ffn_norm.weight"] = t[p + "post_attention_layernorm.weight"]
        out[q + "feed_forward.w1.weight"] = t[p + "mlp.gate_proj.weight"]
        out[q + "feed_forward.w2.weight"] = t[p + "mlp.down_proj.weight"]
        out[q + "feed_forward.w3.weight"] = t[p + "mlp.up_proj.weight"]
    params = {
        "dim": cfg["hidden_size"],
        "n_layers": cfg["num_hidden_layers"],
        "head_dim": cfg["head_dim"],
        "hidden_dim": cfg["intermediate_size"],
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "norm_eps": cfg["rms_norm_eps"],
        "sliding_window": cfg["sliding_window"],
        "vocab_size": cfg["vocab_size"],
        "rope_theta": cfg["rope_parameters"]["rope_theta"],
    }
    DST.mkdir(parents=True, exist_ok=True)
    (DST / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    save_file({k: v.copy() for k, v in sorted(out.items())}, str(DST / "consolidated.safetensors"))
    print(f"wrote {DST}")


if __name__ == "__main__":
    main()
