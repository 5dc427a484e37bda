#!/usr/bin/env python3
"""Fixtures for every GGUF quant type bora computes with, k-quants included.

Usage:  python tools/oracle/make_kquant_fixtures.py

1. tests/fixtures/quants/{TYPE}.bin + {TYPE}.f32.bin: random blocks of each type (scale
   fields set to finite values) and their dequantization by the `gguf` package
   (gguf.quants.dequantize), the oracle for bora's block decoders.
2. tests/fixtures/tiny/mistral_k.{ftype}.gguf: a tiny Mistral-shaped model whose rows are
   256 long (k-quant blocks span 256 weights), quantized by llama.cpp's own quantizer
   (llama-cpp-python's llama_model_quantize) to Q2_K, Q3_K_M, Q4_K_M, Q5_K_M, Q6_K, Q5_0
   and Q5_1 — the mixes of types users download. For each file:
   *.logits.f32.bin  transformers (eager, f32) on the gguf-dequantized weights: the exact
                     product of the stored weights;
   *.llamacpp.f32.bin llama.cpp's logits on the same file (activations quantized to 8 bits
                     as its CPU kernels do; F32 KV cache).
   Summary with tensor types and figures: tiny/summary_kquants.json.
(`bora quantize` is checked against llama.cpp's own re-quantization of these files:
tools/oracle/make_ggml_quantize_fixtures.py.)
"""

from __future__ import annotations

import ctypes
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as QT
from gguf import LlamaFileType as FT

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_gguf_llamacpp import llama_logits  # noqa: E402
from convert_gguf import gguf_to_hf, hf_to_gguf, hparams, logits_from_weights, read_gguf, write_gguf  # noqa: E402
from make_tiny_models import build_model, init_weights  # noqa: E402
from tinylib import TINY_DIR, full_logits, random_ids, setup_torch, write_f32, write_json  # noqa: E402

FIXTURES = TINY_DIR.parent
QUANTS_DIR = FIXTURES / "quants"

# Offsets of the f16 scale fields inside one block, per type (ggml's block structs).
SCALE_FIELDS = {
    QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2], QT.Q8_0: [0],
    QT.Q2_K: [80, 82], QT.Q3_K: [108], QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208],
}
BLOCK_TYPES = list(SCALE_FIELDS) + [QT.F16, QT.BF16]

# llama.cpp ftypes for the tiny k-quant model.
KQUANT_FILES = [("q2_k", 10), ("q3_k_m", 12), ("q4_k_m", 15), ("q5_k_m", 17), ("q6_k", 18),
                ("q5_0", 8), ("q5_1", 9)]

MODEL_CFG = dict(vocab_size=256, hidden_size=256, intermediate_size=256, num_hidden_layers=2,
                 max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, sliding_window=None,
                 rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
MODEL_SEED = 606
PROMPT_SEED = 1234
PROMPT_LEN = 64


def block_fixtures() -> dict:
    QUANTS_DIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)
    out = {}
    for qt in BLOCK_TYPES:
        elems, nbytes = gguf.GGML_QUANT_SIZES[qt]
        n_elems = 1024
        n_blocks = n_elems // elems
        if qt in (QT.F16, QT.BF16):
            vals = rng.normal(0, 1, n_elems).astype(np.float32)
            raw = (vals.astype(np.float16).view(np.uint8) if qt == QT.F16
                   else (vals.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8))
        else:
            raw = rng.integers(0, 256, (n_blocks, nbytes), dtype=np.uint8)
            for off in SCALE_FIELDS[qt]:
                # magnitudes 1e-3..5e-2, either sign, so min/offset terms are exercised too
                s = rng.uniform(1e-3, 5e-2, n_blocks) * rng.choice([-1.0, 1.0], n_blocks)
                raw[:, off:off + 2] = s.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
        raw = np.ascontiguousarray(raw).reshape(-1)
        deq = gguf.quants.dequantize(raw, qt).astype(np.float32).reshape(-1)
        assert deq.shape == (n_elems,) and np.isfinite(deq).all(), qt
        (QUANTS_DIR / f"{qt.name}.bin").write_bytes(raw.tobytes())
        write_f32(QUANTS_DIR / f"{qt.name}.f32.bin", deq)
        out[qt.name] = {"elements": n_elems, "bytes": int(raw.size)}
    # Quantization oracle for the types the gguf package quantizes (bit-exact with ggml's
    # reference quantizers): one shared input row, its bytes per type.
    x = rng.normal(0, 1, 1024).astype(np.float32)
    x[::97] *= 8.0
    x[300:340] = 0.25
    write_f32(QUANTS_DIR / "quantize_input.f32.bin", x)
    for qt in (QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1):
        q = gguf.quants.quantize(x.reshape(1, -1), qt).reshape(-1)
        (QUANTS_DIR / f"{qt.name}.quantized.bin").write_bytes(q.tobytes())
    write_json(QUANTS_DIR / "summary.json", {
        "oracle": f"gguf {gguf.__version__ if hasattr(gguf, '__version__') else ''} gguf.quants.dequantize",
        "types": out})
    return out


def llama_quantize(src: Path, dst: Path, ftype: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize failed for ftype {ftype}"


def kquant_model() -> dict:
    model = build_model("MistralConfig", MODEL_CFG)
    init_weights(model, MODEL_SEED)
    # Scale matrices down: with 256-wide rows N(0, 0.2²) would saturate every softmax.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed_tokens" not in name:
                p.mul_(0.5)
    report = {}
    ids = random_ids(PROMPT_SEED, PROMPT_LEN)
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        model.save_pretrained(td / "hf")
        cfg = json.loads((td / "hf" / "config.json").read_text())
        hp = hparams(cfg)
        tensors = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
        f32 = td / "mistral_k.f32.gguf"
        # llama.cpp needs a vocabulary to load a model: 256 byte tokens.
        write_gguf(f32, "mistral_k", hp, hf_to_gguf(tensors, hp), QT.F32, FT.ALL_F32, dummy_vocab=True)
        f32_logits = full_logits(model, ids)
        for suffix, ftype in KQUANT_FILES:
            path = TINY_DIR / f"mistral_k.{suffix}.gguf"
            llama_quantize(f32, path, ftype)
            back, types, _ = read_gguf(path)
            ref_model = logits_from_weights(td / "hf", gguf_to_hf(back, hp))
            logits = full_logits(ref_model, ids)
            write_f32(TINY_DIR / f"mistral_k.{suffix}.logits.f32.bin", logits)
            lc = llama_logits(path, ids)
            write_f32(TINY_DIR / f"mistral_k.{suffix}.llamacpp.f32.bin", lc)
            counts: dict[str, int] = {}
            for t in types.values():
                counts[t] = counts.get(t, 0) + 1
            report[path.name] = {
                "size": path.stat().st_size,
                "tensor_types": counts,
                "logits_std": float(logits.std()),
                "maxdiff_vs_f32_model": float(np.abs(logits - f32_logits).max()),
                "maxdiff_llamacpp_vs_reference": float(np.abs(lc - logits).max()),
                "top1_agreement_llamacpp_vs_reference": float((lc.argmax(1) == logits.argmax(1)).mean()),
            }
            print(path.name, report[path.name], flush=True)
    return {"prompt_ids": ids, "logits_shape": [PROMPT_LEN, MODEL_CFG["vocab_size"]],
            "config": MODEL_CFG, "weight_seed": MODEL_SEED, "files": report}


def main() -> None:
    setup_torch()
    blocks = block_fixtures()
    print("blocks", blocks, flush=True)
    summary = kquant_model()
    write_json(TINY_DIR / "summary_kquants.json", summary)


if __name__ == "__main__":
    main()
