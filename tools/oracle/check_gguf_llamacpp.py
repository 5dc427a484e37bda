#!/usr/bin/env python3
"""Independent check of the tiny GGUF conversion with llama.cpp itself (llama-cpp-python).

Usage:  python tools/oracle/check_gguf_llamacpp.py      (after convert_gguf.py)

For each tiny f32 model, writes a temporary GGUF identical to tests/fixtures/tiny/X.f32.gguf
plus a dummy 256-byte-token vocab (llama.cpp needs tokenizer.ggml.* to load a model), runs the
64-token logits prompt through llama.cpp and compares with the transformers reference
(logits.f32.bin). Nothing under tests/fixtures is written except tiny/summary_llamacpp.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    import llama_cpp
    from llama_cpp import Llama

    orig = llama_cpp.llama_cpp.llama_model_default_params

    def defaults():
        mp = orig()
        mp.use_extra_bufts = False  # AMX path segfaults on the reference machine; use plain ggml kernels
        return mp

    llama_cpp.llama_cpp.llama_model_default_params = defaults
    try:
        llm = Llama(model_path=str(path), logits_all=True, n_ctx=128, n_threads=2, verbose=False,
                    type_k=0, type_v=0)  # F32 KV cache (default F16 costs ~1e-2)
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = orig
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float32)
    del llm
    return out


def main() -> None:
    # Here, not at the top: other scripts import llama_logits without torch installed.
    from convert_gguf import FT, QT, hf_to_gguf, hparams, load_hf_tensors, write_gguf
    from tinylib import TINY_DIR, full_logits, load_hf, setup_torch, write_json

    setup_torch()
    report = {}
    for name in ("mistral_nowin", "llama_tied", "mixtral", "mistral_swa"):
        mdir = TINY_DIR / name
        cfg = json.loads((mdir / "config.json").read_text())
        hp = hparams(cfg)
        ref = json.loads((mdir / "reference.json").read_text())
        ref_logits = np.fromfile(mdir / "logits.f32.bin", dtype="<f4").reshape(ref["logits_shape"])
        with tempfile.TemporaryDirectory() as td:
            p = Path(td) / f"{name}.f32.vocab.gguf"
            write_gguf(p, name, hp, hf_to_gguf(load_hf_tensors(mdir), hp), QT.F32, FT.ALL_F32, dummy_vocab=True)
            lg = llama_logits(p, ref["prompt_ids"])
        d = np.abs(lg - ref_logits).max(axis=1)
        w = hp["swa"] or len(d)
        info = {"maxdiff_all": float(d.max()), f"maxdiff_pos_lt_{w}": float(d[:w].max())}
        if hp["swa"]:
            info[f"maxdiff_pos_ge_{w}"] = float(d[w:].max())
            # llama.cpp's "llama" arch ignores llama.attention.sliding_window: compare with HF without window.
            model = load_hf(mdir)
            model.config.sliding_window = None
            nowin = full_logits(model, ref["prompt_ids"])
            info["maxdiff_vs_hf_without_window"] = float(np.abs(lg - nowin).max())
        report[name] = info
        print(name, info, flush=True)
    write_json(TINY_DIR / "summary_llamacpp.json", report)


if __name__ == "__main__":
    main()
