#!/usr/bin/env python3
"""ggml's own k-quant quantizers as the oracle for `bora quantize` (no importance matrix: what
llama-quantize runs by default).

Usage:  python tools/oracle/make_ggml_quantize_fixtures.py
        (numpy, gguf and llama-cpp-python; no torch)

1. tests/fixtures/quants/kquant_input.f32.bin: 48 super-blocks of 256 weights (normal rows,
   outliers, all-zero, constant, one-signed, tiny and huge groups) and
   {Q2_K,Q3_K,Q4_K,Q5_K,Q6_K}.quantized.bin: the bytes ggml_quantize_chunk writes for them, called in
   llama.cpp's libggml-base as llama-cpp-python bundles it.
2. tests/fixtures/tiny/mistral_k.requant_{q4_k_m,q5_k_m}.gguf: llama.cpp's llama_model_quantize
   of mistral_k.q6_k.gguf to Q4_K_M and Q5_K_M (re-quantized from the Q6_K weights, as `bora
   quantize` does from a quantized file), with llama.cpp's logits on each
   (*.llamacpp.f32.bin, F32 KV cache) for the prompt of tiny/summary_kquants.json.
   Summary: tiny/summary_requant.json.
3. tests/fixtures/tiny/mixtral8.q8_0.gguf: a tiny Mixtral-shaped model with 8 experts (random
   weights, Q8_0), where llama.cpp's rules for 8-expert models apply, and
   tiny/mixtral8.requant.json: each tensor's type and SHA-256 in llama.cpp's re-quantization
   of it to each k-quant file type (Q2_K … Q6_K).
   tests/fixtures/tiny/gqa4.q8_0.gguf and tiny/gqa4.requant.json: the same for a tiny dense
   model whose KV heads each serve four query heads (Q2_K's attn_v rule depends on that).
4. tests/fixtures/smollm2/requant.json: each tensor's type and SHA-256 in llama.cpp's
   re-quantization of SmolLM2-135M-Instruct.Q4_1.gguf (tools/fetch-demo-model.sh) to each
   k-quant file type: a real model's shapes (576-wide rows, tied embeddings, 30 layers) meet
   llama.cpp's fallbacks and output rules.
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_gguf_llamacpp import llama_logits  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
QUANTS_DIR = FIXTURES / "quants"
TINY_DIR = FIXTURES / "tiny"
KQUANTS = (QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K)
# llama.cpp's llama_ftype values.
REQUANT_FILES = [("q4_k_m", 15), ("q5_k_m", 17)]
# llama-quantize's k-quant file types (Q2_K_S is left out: it needs an importance matrix).
K_FILE_TYPES = [("q2_k", 10), ("q3_k_s", 11), ("q3_k_m", 12), ("q3_k_l", 13), ("q4_k_s", 14),
                ("q4_k_m", 15), ("q5_k_s", 16), ("q5_k_m", 17), ("q6_k", 18)]


def ggml_base() -> ctypes.CDLL:
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
    ggml = ctypes.CDLL(str(lib))
    ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
    ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                         ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    ggml.ggml_quantize_init.argtypes = [ctypes.c_int]
    return ggml


def kquant_input() -> np.ndarray:
    """Super-blocks of 256 that reach each branch of ggml's searches."""
    rng = np.random.default_rng(77)
    blocks = []
    for i in range(32):
        x = rng.normal(0, 0.02 * (1 + i % 4), 256)
        x[rng.integers(0, 256, 3)] *= 12.0  # outliers, as real weight rows have
        blocks.append(x)
    blocks.append(np.zeros(256))                                # all zero
    blocks.append(np.full(256, 0.125))                          # constant, positive
    blocks.append(np.full(256, -0.5))                           # constant, negative
    blocks.append(np.abs(rng.normal(0, 1, 256)))                # one-signed: min clamps to 0
    blocks.append(-np.abs(rng.normal(0, 1, 256)))
    blocks.append(rng.normal(0, 1e-9, 256))                     # tiny
    blocks.append(rng.normal(0, 300.0, 256))                    # huge
    x = rng.normal(0, 1, 256)
    x[:32] = 0.0                                                # one zero group among others
    x[32:64] = 1e-12
    blocks.append(x)
    x = rng.normal(0, 1, 256)
    x[::16] = 40.0                                              # one spike per Q6_K group
    blocks.append(x)
    x = rng.uniform(-1, 1, 256)
    x[100] = -50.0                                              # one huge negative
    blocks.append(x)
    for _ in range(6):
        blocks.append(rng.standard_t(3, 256) * 0.05)            # heavy tails
    x = np.concatenate(blocks).astype(np.float32)
    assert x.size == 48 * 256
    return x


def quantize_fixtures() -> dict:
    ggml = ggml_base()
    x = kquant_input()
    x.tofile(QUANTS_DIR / "kquant_input.f32.bin")
    out = {}
    for qt in KQUANTS:
        elems, nbytes = gguf.GGML_QUANT_SIZES[qt]
        dst = np.zeros(x.size // elems * nbytes, dtype=np.uint8)
        ggml.ggml_quantize_init(int(qt))
        written = ggml.ggml_quantize_chunk(int(qt), x.ctypes.data, dst.ctypes.data, 0, 1, x.size, None)
        assert written == dst.size, (qt, written)
        (QUANTS_DIR / f"{qt.name}.quantized.bin").write_bytes(dst.tobytes())
        back = gguf.quants.dequantize(dst, qt).reshape(-1)
        rms = float(np.sqrt(np.mean((back - x) ** 2) / np.mean(x ** 2)))
        out[qt.name] = {"bytes": int(dst.size), "relative_rms_error": rms}
        print(qt.name, out[qt.name], flush=True)
    return out


def llama_quantize(src: Path, dst: Path, ftype: int) -> None:
    """llama.cpp's llama_model_quantize, as llama-quantize runs it (no importance matrix),
    allowed to re-quantize an already quantized file."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    params.allow_requantize = True
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize failed for ftype {ftype}"


def requantized_files() -> dict:
    ids = json.loads((TINY_DIR / "summary_kquants.json").read_text())["prompt_ids"]
    src = TINY_DIR / "mistral_k.q6_k.gguf"
    report = {}
    for suffix, ftype in REQUANT_FILES:
        dst = TINY_DIR / f"mistral_k.requant_{suffix}.gguf"
        llama_quantize(src, dst, ftype)
        lc = llama_logits(dst, ids)
        lc.astype(np.float32).tofile(TINY_DIR / f"mistral_k.requant_{suffix}.llamacpp.f32.bin")
        counts: dict[str, int] = {}
        for t in gguf.GGUFReader(dst).tensors:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
        report[dst.name] = {"from": src.name, "ftype": ftype, "tensor_types": counts,
                            "size": dst.stat().st_size}
        print(dst.name, report[dst.name], flush=True)
    return report


def tensor_digests(path: Path) -> dict:
    import hashlib

    return {t.name: [t.tensor_type.name, hashlib.sha256(t.data.tobytes()).hexdigest()]
            for t in gguf.GGUFReader(path).tensors}


def requantize_digests(src: Path, ftypes: list[tuple[str, int]], dst_json: Path) -> dict:
    """llama_model_quantize of `src` to each file type; each tensor's type and digest."""
    import tempfile

    out = {"from": src.name, "files": {}}
    with tempfile.TemporaryDirectory() as td:
        for suffix, ftype in ftypes:
            dst = Path(td) / f"out.{suffix}.gguf"
            llama_quantize(src, dst, ftype)
            out["files"][suffix] = {"ftype": ftype, "tensors": tensor_digests(dst)}
    dst_json.write_text(json.dumps(out, indent=1) + "\n")
    return {suffix: sorted({t for t, _ in f["tensors"].values()}) for suffix, f in out["files"].items()}


def requantized_smollm2() -> dict:
    import subprocess

    root = Path(__file__).resolve().parents[2]
    src = Path(subprocess.run([str(root / "tools" / "fetch-demo-model.sh")], check=True,
                              capture_output=True, text=True).stdout.strip())
    return requantize_digests(src, K_FILE_TYPES, FIXTURES / "smollm2" / "requant.json")


def random_model(path: Path, name: str, seed: int, n_ff: int, n_head: int, n_head_kv: int,
                 n_expert: int) -> None:
    """Random weights in Mistral's layout (Mixtral's with experts), 256 wide, 2 layers, stored
    Q8_0 (llama.cpp quantizes Q8_0 targets as copies, which the tests then also cover)."""
    rng = np.random.default_rng(seed)
    n_embd, n_layer, n_vocab = 256, 2, 256
    n_kv = n_embd // n_head * n_head_kv
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<0x{i:02X}>".encode() for i in range(n_vocab)])
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([int(gguf.TokenType.BYTE)] * n_vocab)
    w.add_name(name)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-5)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(2)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q8_0))

    def q8(name: str, *shape: int) -> None:
        x = rng.normal(0, 0.05, shape).astype(np.float32)
        w.add_tensor(name, gguf.quants.quantize(x, QT.Q8_0), raw_dtype=QT.Q8_0)

    def f32(name: str, *shape: int) -> None:
        w.add_tensor(name, (1.0 + rng.normal(0, 0.01, shape)).astype(np.float32))

    q8("token_embd.weight", n_vocab, n_embd)
    for l in range(n_layer):
        f32(f"blk.{l}.attn_norm.weight", n_embd)
        q8(f"blk.{l}.attn_q.weight", n_embd, n_embd)
        q8(f"blk.{l}.attn_k.weight", n_kv, n_embd)
        q8(f"blk.{l}.attn_v.weight", n_kv, n_embd)
        q8(f"blk.{l}.attn_output.weight", n_embd, n_embd)
        f32(f"blk.{l}.ffn_norm.weight", n_embd)
        if n_expert:
            f32(f"blk.{l}.ffn_gate_inp.weight", n_expert, n_embd)
            q8(f"blk.{l}.ffn_gate_exps.weight", n_expert, n_ff, n_embd)
            q8(f"blk.{l}.ffn_up_exps.weight", n_expert, n_ff, n_embd)
            q8(f"blk.{l}.ffn_down_exps.weight", n_expert, n_embd, n_ff)
        else:
            q8(f"blk.{l}.ffn_gate.weight", n_ff, n_embd)
            q8(f"blk.{l}.ffn_up.weight", n_ff, n_embd)
            q8(f"blk.{l}.ffn_down.weight", n_embd, n_ff)
    f32("output_norm.weight", n_embd)
    q8("output.weight", n_vocab, n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def eight_expert_model() -> dict:
    """8 experts of 32-wide FFNs (whose rows fall back from 256-weight types), 4 query heads on
    2 KV heads: llama.cpp's rules for 8-expert models."""
    path = TINY_DIR / "mixtral8.q8_0.gguf"
    random_model(path, "bora-tiny-mixtral8", 8, n_ff=32, n_head=4, n_head_kv=2, n_expert=8)
    return requantize_digests(path, K_FILE_TYPES, TINY_DIR / "mixtral8.requant.json")


def gqa4_model() -> dict:
    """Dense, 8 query heads on 2 KV heads (Mistral 7B's ratio), 256-wide FFN."""
    path = TINY_DIR / "gqa4.q8_0.gguf"
    random_model(path, "bora-tiny-gqa4", 4, n_ff=256, n_head=8, n_head_kv=2, n_expert=0)
    return requantize_digests(path, K_FILE_TYPES, TINY_DIR / "gqa4.requant.json")


def main() -> None:
    summary = {"oracle": "llama.cpp's ggml (llama-cpp-python " + __import__("llama_cpp").__version__ + ")",
               "quantize_chunk": quantize_fixtures(), "requantized": requantized_files(),
               "mixtral8": eight_expert_model(), "gqa4": gqa4_model(),
               "smollm2": requantized_smollm2()}
    (TINY_DIR / "summary_requant.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
