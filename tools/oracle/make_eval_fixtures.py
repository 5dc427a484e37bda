#!/usr/bin/env python3
"""The oracle for `bora eval`: EleutherAI's lm-evaluation-harness (HF backend) on a tiny
random-weight Mistral with the real v1 tokenizer, over the sample data sets in
tests/fixtures/eval/ (written for the tests, in the original formats).

Usage:  python tools/oracle/make_eval_fixtures.py

Writes
  tests/fixtures/eval/tiny_mistral/   the checkpoint (config.json, BF16 model.safetensors with
                                      tied embeddings, tokenizer.json, tokenizer_config.json)
  tests/fixtures/eval/lm_eval_reference.json
      per task, per item: lm-eval's log-likelihood of every choice (mmlu, mc) or its greedy
      generation (gsm8k, humaneval), and its accuracy figures.

The tasks are lm-eval's own configurations with the data set swapped for local files:
mmlu (2-shot from dev/, first_n), gsm8k (2-shot from gsm8k_train.jsonl, first_n,
max_gen_toks 32), humaneval's prompt and stop strings (max_gen_toks 48; the programs are
not run here: lm-eval's code_eval metric is fetched from the Hub), and a generic
multiple-choice task. The model is loaded in float32 (its BF16 weights widen exactly), with
add_bos_token=True: Mistral's tokenizers start every sequence with <s> (mistral-common, and
tokenizer_config.json here says so), but transformers 5 loads this tokenizer.json, which has
no post-processor, as a plain TokenizersBackend that adds nothing unless told.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_eval_tasks import mmlu_tasks, other_tasks  # noqa: E402
from make_tiny_models import build_model, init_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EVAL = ROOT / "tests/fixtures/eval"
MODEL = EVAL / "tiny_mistral"
TOKENIZER = ROOT / "tests/fixtures/tokenizer_v1"
SEED = 4242
MMLU_SHOTS = 2
GSM8K_SHOTS = 2
GSM8K_TOKENS = 32
HUMANEVAL_TOKENS = 48
HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


def make_model() -> None:
    cfg = dict(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
               sliding_window=None, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(SEED)
    model = build_model("MistralConfig", cfg)
    init_weights(model, SEED)
    if MODEL.exists():
        shutil.rmtree(MODEL)
    model.to(torch.bfloat16).save_pretrained(MODEL)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(TOKENIZER / f, MODEL / f)


def main() -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    make_model()
    tasks = mmlu_tasks(EVAL / "mmlu/data", MMLU_SHOTS) + other_tasks(EVAL, GSM8K_SHOTS, GSM8K_TOKENS, HUMANEVAL_TOKENS, HUMANEVAL_STOP)
    with tempfile.TemporaryDirectory() as d:
        for t in tasks:
            (Path(d) / f"{t['task']}.yaml").write_text(yaml.safe_dump(t, allow_unicode=True))
        res = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={MODEL},dtype=float32,device=cpu,add_bos_token=True",
            tasks=[t["task"] for t in tasks],
            task_manager=TaskManager(include_path=d),
            log_samples=True,
            batch_size=1,
        )
    out: dict = {"lm_eval_version": lm_eval.__version__, "tasks": {}}
    for t in tasks:
        name = t["task"]
        samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
        items = []
        for s in samples:
            if t["output_type"] == "multiple_choice":
                lls = [r[0][0] for r in s["resps"]]
                greedy = [bool(r[0][1]) for r in s["resps"]]
                items.append({"loglikelihoods": lls, "is_greedy": greedy, "target": s["target"],
                              "acc": s["acc"], **({"acc_norm": s["acc_norm"]} if "acc_norm" in s else {})})
            else:
                items.append({"generation": s["resps"][0][0]})
        out["tasks"][name] = {"items": items, "results": {k: v for k, v in res["results"][name].items()
                                                          if isinstance(v, (int, float))}}
    # Items whose best two choices are closer than this could flip between implementations.
    for name, t in out["tasks"].items():
        for i, it in enumerate(t["items"]):
            if "loglikelihoods" in it:
                a = sorted(it["loglikelihoods"], reverse=True)
                if a[0] - a[1] < 1e-3:
                    print(f"warning: {name} item {i}: top-2 gap {a[0] - a[1]:.2e}")
    (EVAL / "lm_eval_reference.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({k: v["results"] for k, v in out["tasks"].items()}, indent=1))


if __name__ == "__main__":
    main()
