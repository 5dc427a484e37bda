"""A SmolLM2 prompt whose greedy continuation any correct implementation must reproduce.

Greedy decoding turns tiny numeric differences into different text wherever the top two logits
are close. llama.cpp rounds activations to 8 bits in its Q4_1/Q8_0 dot products and keeps its
KV cache in F16; against the exact f32 computation of the same weights (make_smollm2_exact.py)
that moves logits by up to NOISE (0.68 measured on the three reference prompts). So only a
continuation whose every step has a top-1 margin above NOISE is a fair "same tokens" test.

Rule: from the fixed CANDIDATES below, in order, take the first whose llama.cpp greedy
continuation has a top-1 margin > NOISE at each of its first 32 steps; record all candidates'
margins so the choice can be checked. Writes tests/fixtures/smollm2/stable_greedy.json.
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_smollm2_reference import find_model  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "smollm2"
NOISE = 1.0
STEPS = 32
N = 64
CANDIDATES = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nName the planets of the solar system in order.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nList the days of the week.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite the numbers from one to twenty in words.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat are the months of the year?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nRecite the English alphabet.<|im_end|>\n<|im_start|>assistant\n",
]


def main():
    import llama_cpp
    from llama_cpp import Llama

    # As in make_smollm2_reference.py: the plain ggml CPU kernels, not the AMX buffer types.
    orig = llama_cpp.llama_cpp.llama_model_default_params

    def defaults():
        mp = orig()
        mp.use_extra_bufts = False
        return mp

    llama_cpp.llama_cpp.llama_model_default_params = defaults
    llm = Llama(model_path=str(find_model()), logits_all=True, n_ctx=512, n_threads=2, verbose=False, seed=0)
    llama_cpp.llama_cpp.llama_model_default_params = orig
    tried, chosen = [], None
    for text in CANDIDATES:
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        cur = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
        greedy, margins = [], []
        for _ in range(N):
            s = np.sort(cur)
            margins.append(float(s[-1] - s[-2]))
            nxt = int(cur.argmax())
            greedy.append(nxt)
            llm.eval([nxt])
            cur = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        m32 = min(margins[:STEPS])
        tried.append({"text": text, "min_margin_first_32": m32})
        print(repr(text[:60]), "min margin over 32 steps", round(m32, 3), repr(llm.detokenize(greedy[:32]).decode(errors="replace")))
        if chosen is None and m32 > NOISE:
            chosen = {"text": text, "prompt_ids": [int(i) for i in ids], "greedy_ids": greedy,
                      "greedy_margins": margins,
                      "greedy_text": llm.detokenize(greedy).decode("utf-8", errors="replace")}
    if chosen is None:
        raise SystemExit("no candidate meets the rule")
    chosen.update({"rule": f"first of candidates whose llama.cpp greedy top-1 margin > {NOISE} at each of the first {STEPS} steps",
                   "candidates": tried, "llama_cpp_python_version": llama_cpp.__version__})
    (OUT / "stable_greedy.json").write_text(json.dumps(chosen, indent=1))


if __name__ == "__main__":
    main()
