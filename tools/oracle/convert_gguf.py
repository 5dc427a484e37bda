#!/usr/bin/env python3
"""Write GGUF copies of the tiny HF checkpoints in tests/fixtures/tiny/ and the
reference outputs of the quantized copies.

Usage:  python tools/oracle/convert_gguf.py      (after make_tiny_models.py)

The conversion is our own code; it follows what llama.cpp's convert_hf_to_gguf.py does
for the "llama" architecture: HF names -> GGUF names, Q/K rows permuted from the HF
"split halves" rotary layout to llama.cpp's interleaved-pairs layout, Mixtral experts
stacked into 3-D [n_expert, out, in] tensors, 1-D norm weights kept F32.

References for the quantized files: every tensor is read back from the written GGUF
with gguf.GGUFReader, dequantized with gguf.quants.dequantize, Q/K un-permuted, and the
resulting f32 weights are loaded into the transformers model (eager attention, eager
experts, f32) to compute the same 64-position logits as the f32 reference.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as QT
from gguf import LlamaFileType as FT
from safetensors.numpy import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tinylib import (  # noqa: E402
    GREEDY_NEW,
    TINY_DIR,
    full_logits,
    greedy_full_recompute,
    load_hf,
    quant_roundtrip_model,
    random_ids,
    setup_torch,
    write_f32,
    write_json,
)

FILES = [
    # (model dir, file suffix, quant type for matrices, file type)
    ("mistral_swa", "f32", QT.F32, FT.ALL_F32),
    ("mistral_swa", "f16", QT.F16, FT.MOSTLY_F16),
    ("mistral_swa", "bf16", QT.BF16, FT.MOSTLY_BF16),
    ("mistral_swa", "q8_0", QT.Q8_0, FT.MOSTLY_Q8_0),
    ("mistral_swa", "q4_0", QT.Q4_0, FT.MOSTLY_Q4_0),
    ("mistral_swa", "q4_1", QT.Q4_1, FT.MOSTLY_Q4_1),
    ("mixtral", "q8_0", QT.Q8_0, FT.MOSTLY_Q8_0),
    ("mixtral", "f32", QT.F32, FT.ALL_F32),
    ("llama_tied", "f32", QT.F32, FT.ALL_F32),
    ("mistral_nowin", "f32", QT.F32, FT.ALL_F32),
]
# quantized files that get their own logits reference (f32 files: identical to the HF one)
LOGITS_REFS = {("mistral_swa", "f16"), ("mistral_swa", "q8_0"), ("mistral_swa", "q4_0"),
               ("mistral_swa", "q4_1"), ("mixtral", "q8_0")}
GREEDY_REFS = {("mistral_swa", "q8_0"), ("mistral_swa", "q4_0")}
MIN_MARGIN = 1e-2


# ---------------------------------------------------------------------------- io

def load_hf_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    """Read the checkpoint's safetensors (single file or sharded) as float32 numpy."""
    idx = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(idx.read_text())["weight_map"].values())) if idx.exists() else ["model.safetensors"]
    out: dict[str, np.ndarray] = {}
    for f in files:
        for k, v in load_file(str(model_dir / f)).items():
            out[k] = v.astype(np.float32)
    return out


def hparams(cfg: dict) -> dict:
    n_head = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    rope = cfg.get("rope_parameters") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta"))
    return dict(
        n_vocab=cfg["vocab_size"], n_embd=cfg["hidden_size"], n_ff=cfg["intermediate_size"],
        n_layer=cfg["num_hidden_layers"], n_head=n_head, n_head_kv=cfg["num_key_value_heads"],
        head_dim=head_dim, rope_theta=float(theta), eps=float(cfg["rms_norm_eps"]),
        n_ctx=cfg["max_position_embeddings"], swa=cfg.get("sliding_window"),
        n_expert=cfg.get("num_local_experts"), n_expert_used=cfg.get("num_experts_per_tok"),
        tied=bool(cfg.get("tie_word_embeddings", False)),
    )


# ---------------------------------------------------------------- permutation

def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF split-halves rotary rows -> llama.cpp interleaved pairs (as convert_hf_to_gguf)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --------------------------------------------------------------- name mapping

def hf_to_gguf(t: dict[str, np.ndarray], hp: dict) -> dict[str, np.ndarray]:
    """HF checkpoint tensors -> ordered dict of GGUF tensors (numpy shapes as HF, i.e. [out, in])."""
    g: dict[str, np.ndarray] = {"token_embd.weight": t["model.embed_tokens.weight"]}
    for i in range(hp["n_layer"]):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        g[b + "attn_norm.weight"] = t[p + "input_layernorm.weight"]
        g[b + "attn_q.weight"] = permute(t[p + "self_attn.q_proj.weight"], hp["n_head"])
        g[b + "attn_k.weight"] = permute(t[p + "self_attn.k_proj.weight"], hp["n_head_kv"])
        g[b + "attn_v.weight"] = t[p + "self_attn.v_proj.weight"]
        g[b + "attn_output.weight"] = t[p + "self_attn.o_proj.weight"]
        g[b + "ffn_norm.weight"] = t[p + "post_attention_layernorm.weight"]
        if hp["n_expert"]:
            m = p + "block_sparse_moe."
            g[b + "ffn_gate_inp.weight"] = t[m + "gate.weight"]
            for gname, w in (("ffn_gate_exps", "w1"), ("ffn_down_exps", "w2"), ("ffn_up_exps", "w3")):
                g[b + gname + ".weight"] = np.stack(
                    [t[f"{m}experts.{e}.{w}.weight"] for e in range(hp["n_expert"])])
        else:
            g[b + "ffn_gate.weight"] = t[p + "mlp.gate_proj.weight"]
            g[b + "ffn_up.weight"] = t[p + "mlp.up_proj.weight"]
            g[b + "ffn_down.weight"] = t[p + "mlp.down_proj.weight"]
    g["output_norm.weight"] = t["model.norm.weight"]
    if not hp["tied"]:
        g["output.weight"] = t["lm_head.weight"]
    return g


def gguf_to_hf(g: dict[str, np.ndarray], hp: dict) -> dict[str, np.ndarray]:
    """Inverse of hf_to_gguf (on dequantized f32 arrays)."""
    t = {"model.embed_tokens.weight": g["token_embd.weight"]}
    for i in range(hp["n_layer"]):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        t[p + "input_layernorm.weight"] = g[b + "attn_norm.weight"]
        t[p + "self_attn.q_proj.weight"] = unpermute(g[b + "attn_q.weight"], hp["n_head"])
        t[p + "self_attn.k_proj.weight"] = unpermute(g[b + "attn_k.weight"], hp["n_head_kv"])
        t[p + "self_attn.v_proj.weight"] = g[b + "attn_v.weight"]
        t[p + "self_attn.o_proj.weight"] = g[b + "attn_output.weight"]
        t[p + "post_attention_layernorm.weight"] = g[b + "ffn_norm.weight"]
        if hp["n_expert"]:
            m = p + "block_sparse_moe."
            t[m + "gate.weight"] = g[b + "ffn_gate_inp.weight"]
            for gname, w in (("ffn_gate_exps", "w1"), ("ffn_down_exps", "w2"), ("ffn_up_exps", "w3")):
                for e in range(hp["n_expert"]):
                    t[f"{m}experts.{e}.{w}.weight"] = g[b + gname + ".weight"][e]
        else:
            t[p + "mlp.gate_proj.weight"] = g[b + "ffn_gate.weight"]
            t[p + "mlp.up_proj.weight"] = g[b + "ffn_up.weight"]
            t[p + "mlp.down_proj.weight"] = g[b + "ffn_down.weight"]
    t["model.norm.weight"] = g["output_norm.weight"]
    if not hp["tied"]:
        t["lm_head.weight"] = g["output.weight"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in t.items()}


# --------------------------------------------------------------------- writer

def write_gguf(path: Path, name: str, hp: dict, tensors: dict[str, np.ndarray], qtype: QT, ftype: FT,
               dummy_vocab: bool = False) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    if dummy_vocab:
        # Only for check_gguf_llamacpp.py: llama.cpp refuses a model without tokenizer.ggml.model.
        # 256 byte tokens <0x00>..<0xFF> make a valid SPM vocab of the right size.
        w.add_tokenizer_model("llama")
        w.add_token_list([f"<0x{i:02X}>".encode() for i in range(hp["n_vocab"])])
        w.add_token_scores([0.0] * hp["n_vocab"])
        w.add_token_types([int(gguf.TokenType.BYTE)] * hp["n_vocab"])
    w.add_name(f"bora-tiny-{name}")
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(hp["n_embd"])
    w.add_block_count(hp["n_layer"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    w.add_rope_freq_base(hp["rope_theta"])
    w.add_layer_norm_rms_eps(hp["eps"])
    w.add_rope_dimension_count(hp["head_dim"])
    w.add_key_length(hp["head_dim"])
    w.add_value_length(hp["head_dim"])
    w.add_vocab_size(hp["n_vocab"])
    if hp["swa"]:
        w.add_sliding_window(hp["swa"])
    if hp["n_expert"]:
        w.add_expert_count(hp["n_expert"])
        w.add_expert_used_count(hp["n_expert_used"])
    w.add_file_type(int(ftype))
    for tname, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        keep_f32 = arr.ndim == 1 or tname.endswith("ffn_gate_inp.weight") or qtype == QT.F32
        if keep_f32:
            w.add_tensor(tname, arr)
        elif qtype == QT.F16:
            w.add_tensor(tname, arr.astype(np.float16))
        else:
            w.add_tensor(tname, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read_gguf(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str], dict]:
    """Read back: dequantized f32 tensors (numpy order), tensor types, and scalar metadata."""
    r = gguf.GGUFReader(str(path))
    tensors, types = {}, {}
    for t in r.tensors:
        types[t.name] = t.tensor_type.name
        arr = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        expected = tuple(int(x) for x in reversed(t.shape.tolist()))
        arr = arr.reshape(expected)
        tensors[t.name] = arr
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        v = f.contents()
        meta[k] = v
    return tensors, types, meta


# ----------------------------------------------------------------------- main

def logits_from_weights(model_dir: Path, hf_tensors: dict[str, np.ndarray]):
    """Load f32 weights (HF names) into the transformers model and return it."""
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        shutil.copy(model_dir / "config.json", td / "config.json")
        save_file(hf_tensors, str(td / "model.safetensors"), metadata={"format": "pt"})
        model = load_hf(td)
    return model


def main() -> None:
    setup_torch()
    report = {}
    for name, suffix, qtype, ftype in FILES:
        mdir = TINY_DIR / name
        cfg = json.loads((mdir / "config.json").read_text())
        hp = hparams(cfg)
        ref = json.loads((mdir / "reference.json").read_text())
        hf_t = load_hf_tensors(mdir)
        gt = hf_to_gguf(hf_t, hp)
        path = TINY_DIR / f"{name}.{suffix}.gguf"
        write_gguf(path, name, hp, gt, qtype, ftype)

        # ---- read back & check
        back, types, meta = read_gguf(path)
        assert list(back.keys()) == list(gt.keys()), (list(back.keys()), list(gt.keys()))
        assert meta["general.architecture"] == "llama"
        assert meta["llama.attention.head_count"] == hp["n_head"]
        assert meta["llama.attention.key_length"] == hp["head_dim"]
        assert meta["general.file_type"] == int(ftype)
        assert ("llama.attention.sliding_window" in meta) == bool(hp["swa"])
        max_err = {}
        for k in gt:
            assert back[k].shape == gt[k].shape, (k, back[k].shape, gt[k].shape)
            max_err[k] = float(np.abs(back[k] - gt[k]).max())
            if types[k] in ("F32", "F16"):
                assert max_err[k] == 0.0, (k, max_err[k])  # tiny weights are f16-exact
        info = {"file": path.name, "size": path.stat().st_size,
                "tensor_types": sorted(set(types.values())),
                "max_abs_weight_error": max(max_err.values())}
        deq = gguf_to_hf(back, hp)
        for k in hf_t:
            if suffix in ("f32", "f16", "bf16"):
                assert np.array_equal(deq[k], hf_t[k]), k

        prompt_ids = ref["prompt_ids"]
        ref_logits = np.fromfile(mdir / "logits.f32.bin", dtype="<f4").reshape(ref["logits_shape"])
        if (name, suffix) in LOGITS_REFS or suffix in ("f32", "bf16"):
            model = logits_from_weights(mdir, deq)
            logits = full_logits(model, prompt_ids)
            info["maxdiff_vs_f32_reference"] = float(np.abs(logits - ref_logits).max())
            if suffix in ("f32", "f16", "bf16"):
                assert np.array_equal(logits, ref_logits), (name, suffix)
            else:
                # Cross-check: identical to quantizing the HF weights in memory (no GGUF, no permutation).
                rt = quant_roundtrip_model(load_hf(mdir), qtype)
                info["maxdiff_vs_inmemory_roundtrip"] = float(np.abs(full_logits(rt, prompt_ids) - logits).max())
                assert info["maxdiff_vs_inmemory_roundtrip"] == 0.0
            if (name, suffix) in LOGITS_REFS:
                write_f32(TINY_DIR / f"{name}.{suffix}.logits.f32.bin", logits)
            if name == "mixtral":
                from make_tiny_models import router_min_gap
                info["router_min_gap"] = router_min_gap(model, prompt_ids)
            if (name, suffix) in GREEDY_REFS:
                prompt = ref["greedy"]["prompt_ids"]
                seed = None
                gen, mm, _ = greedy_full_recompute(model, prompt, GREEDY_NEW)
                s = 7000
                while mm <= MIN_MARGIN:
                    seed = s
                    prompt = random_ids(s, len(prompt))
                    gen, mm, _ = greedy_full_recompute(model, prompt, GREEDY_NEW)
                    s += 1
                same = prompt == ref["greedy"]["prompt_ids"]
                write_json(TINY_DIR / f"{name}.{suffix}.greedy.json", {
                    "prompt_ids": prompt, "generated_ids": gen, "min_margin": mm,
                    "notes": (f"Greedy ({GREEDY_NEW} tokens, full recomputation, no cache) of the transformers model "
                              f"loaded with the dequantized weights of {path.name}. "
                              + ("Same 8-token prompt as the f32 reference.json greedy run. " if same else
                                 f"Prompt = random_ids(seed {seed}) because the reference prompt had a margin <= {MIN_MARGIN}. ")
                              + "Agreement with the f32 greedy run: "
                              + (f"first {next((i for i, (a, b) in enumerate(zip(gen, ref['greedy']['generated_ids'])) if a != b), len(gen))} tokens identical." if same else "n/a.")),
                })
                info["greedy_min_margin"] = mm
                info["greedy_same_prompt"] = same
        report[path.name] = info
        print(path.name, info, flush=True)
    write_json(TINY_DIR / "summary_gguf.json", report)


if __name__ == "__main__":
    main()
