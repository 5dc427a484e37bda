"""bora vs llama.cpp on Mistral-7B-shaped GGUF files, same machine, same threads, run
alternately; plus the machine's memory read bandwidth and decode speed as a fraction of the
bandwidth limit (bandwidth ÷ bytes read per token: every weight matrix but the token
embedding, plus the KV cache of the positions so far).

The files have random weights (speed does not depend on the values) in the layout of
Mistral 7B v0.1: 32 layers, hidden 4096, MLP 14336, 32 query / 8 KV heads, vocab 32000,
sliding window 4096, with the real v1 tokenizer from mistral-common. Tensor types follow
llama.cpp's choices for each file type: Q4_0 (output Q6_K), Q8_0, and Q4_K_M (Q4_K, with
Q6_K for output and for attn_v/ffn_down in llama.cpp's "more bits" layers).

Needs: numpy, gguf, sentencepiece, mistral-common, llama-cpp-python, and a release build of
bora. bench/mistral7b.sh sets all of that up on a fresh machine.

    python bench/mistral7b_side_by_side.py [--dir DIR] [--types q4_0,q8_0,q4_k_m]
        [-p 512] [-n 64] [-t 2] [-r 3] [--build-only]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

N_LAYER, N_EMBD, N_FF, N_HEAD, N_HEAD_KV, N_VOCAB = 32, 4096, 14336, 32, 8, 32000
HEAD_DIM = N_EMBD // N_HEAD


# ------------------------------------------------------------------------ files

def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's rule for the layers that get Q6_K in Q4_K_M."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_plan(kind: str):
    """(name, rows, cols, qtype) for every tensor, in llama.cpp's order; norms are F32."""
    from gguf import GGMLQuantizationType as QT

    base = {"q4_0": QT.Q4_0, "q8_0": QT.Q8_0, "q4_k_m": QT.Q4_K}[kind]
    out_type = QT.Q8_0 if kind == "q8_0" else QT.Q6_K
    plan = [("token_embd.weight", N_VOCAB, N_EMBD, base)]
    kv = N_HEAD_KV * HEAD_DIM
    for i in range(N_LAYER):
        more = kind == "q4_k_m" and use_more_bits(i, N_LAYER)
        b = f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", 1, N_EMBD, QT.F32),
            (b + "attn_q.weight", N_EMBD, N_EMBD, base),
            (b + "attn_k.weight", kv, N_EMBD, base),
            (b + "attn_v.weight", kv, N_EMBD, QT.Q6_K if more else base),
            (b + "attn_output.weight", N_EMBD, N_EMBD, base),
            (b + "ffn_norm.weight", 1, N_EMBD, QT.F32),
            (b + "ffn_gate.weight", N_FF, N_EMBD, base),
            (b + "ffn_up.weight", N_FF, N_EMBD, base),
            (b + "ffn_down.weight", N_EMBD, N_FF, QT.Q6_K if more else base),
        ]
    plan += [("output_norm.weight", 1, N_EMBD, QT.F32), ("output.weight", N_VOCAB, N_EMBD, out_type)]
    return plan


# Offsets of the f16 scales in one block (random bytes there could be NaN or huge), and the
# range they are drawn from. Speed must not depend on values, but it did on these: a
# subnormal half converted in software cost a microcode assist per block (BENCHMARKS.md). So
# each type's scales have the magnitude a Mistral-7B-like weight (σ ≈ 0.02) gives it. Q4_0,
# Q8_0 and Q4_K scales are normal halves; Q6_K's d (a block's largest 16-weight scale ÷ 128,
# about amax ÷ 4096 ≈ 1e-5) is a subnormal half in real files. Before the eighteenth session
# Q6_K's were drawn from the others' range, all normal.
SCALE_FIELDS = {
    "Q4_0": ([0], (1e-4, 2e-3)),
    "Q8_0": ([0], (1e-4, 2e-3)),
    "Q4_K": ([0, 2], (1e-4, 2e-3)),
    "Q6_K": ([208], (5e-6, 5e-5)),
}


def random_blocks(qt, nbytes: int, rng) -> np.ndarray:
    import gguf

    _, block_bytes = gguf.GGML_QUANT_SIZES[qt]
    raw = rng.integers(0, 256, nbytes, dtype=np.uint8)
    blocks = raw.reshape(-1, block_bytes)
    offsets, (lo, hi) = SCALE_FIELDS[qt.name]
    for off in offsets:
        s = rng.uniform(lo, hi, blocks.shape[0]).astype(np.float16)
        blocks[:, off:off + 2] = s.view(np.uint8).reshape(-1, 2)
    return raw


def add_v1_tokenizer(w) -> None:
    import gguf
    import sentencepiece as spm

    spec = importlib.util.find_spec("mistral_common")
    model = Path(spec.submodule_search_locations[0]) / "data" / "tokenizer.model.v1"
    sp = spm.SentencePieceProcessor(model_file=str(model))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode())
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types([int(t) for t in types])
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())


def build(path: Path, kind: str) -> None:
    import gguf
    from gguf import GGMLQuantizationType as QT

    ftype = {"q4_0": 2, "q8_0": 7, "q4_k_m": 15}[kind]
    plan = tensor_plan(kind)
    rng = np.random.default_rng(7)
    # One random buffer per type, as large as its largest tensor; every tensor is a view of it.
    pools = {}
    for _, rows, cols, qt in plan:
        if qt != QT.F32:
            elems, bb = gguf.GGML_QUANT_SIZES[qt]
            n = rows * cols // elems * bb
            pools[qt] = max(pools.get(qt, 0), n)
    pools = {qt: random_blocks(qt, n, rng) for qt, n in pools.items()}
    ones = np.ones(N_EMBD, dtype=np.float32)
    tmp = path.with_suffix(".partial")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(f"Mistral-7B-shape random {kind}")
    w.add_context_length(32768)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_vocab_size(N_VOCAB)
    w.add_sliding_window(4096)
    w.add_file_type(ftype)
    add_v1_tokenizer(w)
    for name, rows, cols, qt in plan:
        if qt == QT.F32:
            w.add_tensor(name, ones)
            continue
        elems, bb = gguf.GGML_QUANT_SIZES[qt]
        row_bytes = cols // elems * bb
        data = pools[qt][: rows * row_bytes].reshape(rows, row_bytes)
        w.add_tensor(name, data, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    tmp.rename(path)


def kv_bytes_per_token(p: int, n: int) -> float:
    """Bytes of keys and values a decode step reads, averaged over the n steps after a p-token
    prompt: the step at position i reads every layer's K and V of positions 0..=i (f16, both
    engines' default cache type; the 4096-position window does not bind here). At p = 512
    it is about 1.7% of a Q4_0 step's bytes."""
    per_position = N_LAYER * 2 * N_HEAD_KV * HEAD_DIM * 2
    return per_position * (p + (n + 1) / 2)


def weight_bytes_per_token(path: Path) -> int:
    """Bytes a decode step reads: every matrix except the token embedding (one row)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    return sum(int(t.n_bytes) for t in r.tensors if t.name != "token_embd.weight")


# -------------------------------------------------------------------- bandwidth

def read_bandwidth(threads: int, gib: float = 2.0, reps: int = 5) -> float:
    """Aggregate read bandwidth (GB/s) of `threads` threads summing disjoint slices of a
    buffer far larger than the caches (numpy releases the GIL inside the sum). Best of reps."""
    n = int(gib * (1 << 30)) // 8
    buf = np.ones(n, dtype=np.uint64)
    parts = np.array_split(buf, threads)
    best = 0.0
    for _ in range(reps):
        ts = [threading.Thread(target=np.add.reduce, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = max(best, buf.nbytes / (time.perf_counter() - t0) / 1e9)
    del buf
    return best


# ------------------------------------------------------------------- page cache

def reread_in_huge_pages(path: Path) -> None:
    """Drops `path` from the page cache and reads it back through a map that asks for
    transparent huge pages, so that both engines map its weights in 2 MiB pages where the
    kernel can, as after any fresh read of the file by bora. A file the GGUF writer just
    wrote sits in the cache in 4 KiB pages, and mapped so it decoded about 7% slower
    (BENCHMARKS.md), for both engines; the bandwidth gauge's buffer has huge pages (numpy
    asks for them), so that state would also understate the fraction of the limit."""
    import mmap

    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
            if hasattr(mmap, "MADV_HUGEPAGE"):
                m.madvise(mmap.MADV_HUGEPAGE)
            sum(m[i] for i in range(0, len(m), mmap.PAGESIZE))
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- engines

def bora_once(model: Path, p: int, n: int, threads: int):
    """(prompt tok/s, generation tok/s, load seconds, peak RSS bytes, share of the weights
    mapped in 2 MiB pages) of one `bora bench` run."""
    cmd = [str(ROOT / "target/release/bora"), "bench", str(model), "-p", str(p), "-n", str(n),
           "-r", "1", "-t", str(threads), "--json"]
    j = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return (j["prompt_tokens_per_s"], j["gen_tokens_per_s"], j["load_seconds"], j["peak_rss_bytes"],
            j.get("weights_huge_page_share"))


class LlamaCpp:
    def __init__(self, model: Path, p: int, n: int, threads: int):
        import llama_cpp
        from llama_cpp import Llama

        orig = llama_cpp.llama_cpp.llama_model_default_params

        def defaults():  # plain CPU kernels: this build's AMX path crashes on these machines
            mp = orig()
            mp.use_extra_bufts = False
            return mp

        llama_cpp.llama_cpp.llama_model_default_params = defaults
        try:
            self.llm = Llama(model_path=str(model), n_ctx=p + n + 8, n_batch=p, n_ubatch=p,
                             n_threads=threads, n_threads_batch=threads, verbose=False)
        finally:
            llama_cpp.llama_cpp.llama_model_default_params = orig
        self.prompt = [(i * 7919 + 13) % N_VOCAB for i in range(p)]
        self.n = n

    def once(self):
        llm = self.llm
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(self.prompt)
        t1 = time.perf_counter()
        for _ in range(self.n):
            ptr = llm._ctx.get_logits_ith(-1)
            nxt = int(np.ctypeslib.as_array(ptr, shape=(N_VOCAB,)).argmax())
            llm.eval([nxt])
        t2 = time.perf_counter()
        return len(self.prompt) / (t1 - t0), self.n / (t2 - t1)

    def close(self):
        self.llm.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bora" / "bench")
    ap.add_argument("--types", default="q4_0,q8_0,q4_k_m")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--engines", default="bora,llama.cpp")
    a = ap.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    kinds = a.types.split(",")
    files = {}
    for kind in kinds:
        path = a.dir / f"mistral-7b-shape.{kind}.gguf"
        if not path.exists():
            t0 = time.perf_counter()
            build(path, kind)
            print(f"built {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s", flush=True)
        files[kind] = path
    if a.build_only:
        return

    engines = a.engines.split(",")
    # The machine's bandwidth drifts by a third within an hour, and by a fifth within a minute
    # (other tenants). So it is read before the first run and after every run, and each run's
    # limit uses the mean of the two readings on either side of it: a reading taken once a
    # round put bora's decode at 91%, 74% and 70% of its round's limit, lowest in the rounds
    # the gauge read highest.
    bws = []
    rows = []
    for kind, path in files.items():
        t0 = time.perf_counter()
        reread_in_huge_pages(path)
        print(f"read {path.name} back into the page cache in {time.perf_counter() - t0:.0f} s", flush=True)
        # A decode step reads every weight matrix once and the KV cache of the positions so far.
        per_token = weight_bytes_per_token(path) + kv_bytes_per_token(a.p, a.n)
        res = {e: [] for e in engines}
        # Per engine, each run's decode as a fraction of the limit read around it.
        frac = {e: [] for e in engines}
        file_bws = [read_bandwidth(a.t)]
        llama = LlamaCpp(path, a.p, a.n, a.t) if "llama.cpp" in engines else None
        runs = {"bora": lambda: bora_once(path, a.p, a.n, a.t)}
        if llama:
            runs["llama.cpp"] = llama.once
        for r in range(a.r):
            for e in engines:
                res[e].append(runs[e]())
                file_bws.append(read_bandwidth(a.t))
                around = (file_bws[-2] + file_bws[-1]) / 2
                frac[e].append(res[e][-1][1] / (around * 1e9 / per_token))
            print(f"{kind} round {r + 1}: read bandwidth " + ", ".join(f"{b:.1f}" for b in file_bws[-len(engines) - 1:])
                  + " GB/s; " + ", ".join(
                f"{e} pp {v[-1][0]:.2f} tg {v[-1][1]:.2f} ({frac[e][-1]:.0%} of the limit around it)"
                for e, v in res.items()), flush=True)
        bws += file_bws
        if llama:
            llama.close()
        med = {e: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for e, v in res.items()}
        fracs = {e: statistics.median(f) for e, f in frac.items()}
        extra = None
        if res.get("bora"):
            extra = (statistics.median(x[2] for x in res["bora"]), max(x[3] for x in res["bora"]),
                     min((x[4] for x in res["bora"] if x[4] is not None), default=None))
        rows.append((kind, path.stat().st_size, statistics.median(file_bws) * 1e9 / per_token, med, fracs, extra))
    print()
    print(f"Mistral-7B shape, random weights, {a.t} threads, pp{a.p} / tg{a.n}, median of {a.r} alternating rounds; "
          f"read bandwidth (best of 5, read before the first run and after each) median {statistics.median(bws):.1f} GB/s, "
          f"range {min(bws):.1f}–{max(bws):.1f}")
    print(f"| file | GB | engine | pp{a.p} tok/s | tg{a.n} tok/s | pp vs llama.cpp | tg vs llama.cpp "
          f"| tg / bandwidth limit (median over runs, each against the readings around it) |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, size, limit, med, fracs, _ in rows:
        base = med.get("llama.cpp")
        for e, (pp, tg) in med.items():
            ratio = (f"{pp / base[0]:.2f}×", f"{tg / base[1]:.2f}×") if base else ("", "")
            print(f"| {kind.upper()} | {size / 1e9:.2f} | {e} | {pp:.2f} | {tg:.2f} | {ratio[0]} | {ratio[1]} | "
                  f"{fracs[e]:.0%} (the file's median limit: {limit:.1f} tok/s) |")
    # KV cache at p+n tokens: 32 layers x 2 (K, V) x 8 heads x 128 x f16 (bora's default cache type, as llama.cpp's).
    kv = N_LAYER * 2 * N_HEAD_KV * HEAD_DIM * 2 * (a.p + a.n)
    print()
    print("| file | bora load s (median) | bora peak RSS GB | file + KV cache GB | RSS / (file + KV) "
          "| weights in 2 MiB pages (least of the runs) |")
    print("|---|---|---|---|---|---|")
    for kind, size, _, _, _, extra in rows:
        if extra:
            load_s, rss, huge = extra
            huge = "unknown" if huge is None else f"{huge:.0%}"
            print(f"| {kind.upper()} | {load_s:.3f} | {rss / 1e9:.2f} | {(size + kv) / 1e9:.2f} | "
                  f"{rss / (size + kv):.2f} | {huge} |")


if __name__ == "__main__":
    main()
