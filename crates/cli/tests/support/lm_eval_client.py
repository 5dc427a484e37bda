#!/usr/bin/env python3
"""Runs EleutherAI's lm-evaluation-harness, model `local-completions`, against a running
`bora serve` of tests/fixtures/eval/tiny_mistral (its /v1/completions URL in BORA_URL) on the
sample tasks, and compares every item with lm-eval's own HF-backend run of the same model
(tests/fixtures/eval/lm_eval_reference.json, from tools/oracle/make_eval_fixtures.py):
log-likelihoods of every choice (scored through `echo` + `logprobs`), is-greedy flags,
accuracies, and the greedy generations (through `stop` and `max_tokens`). Exits non-zero,
saying what differs."""

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "tools/oracle"))
from lm_eval_tasks import mmlu_tasks, other_tasks  # noqa: E402

EVAL = ROOT / "tests/fixtures/eval"
REFERENCE = json.loads((EVAL / "lm_eval_reference.json").read_text())
# The settings make_eval_fixtures.py used.
tasks = mmlu_tasks(EVAL / "mmlu/data", 2) + other_tasks(
    EVAL, 2, 32, 48, ["\nclass", "\ndef", "\n#", "\nif", "\nprint"])


def bos_adding_tokenizer(folder: Path) -> None:
    """The fixture's tokenizer.json, with the post-processor real Mistral tokenizer.json files
    have (<s> first). The HF-backend reference run got its <s> from lm-eval passing
    add_bos_token=True to the tokenizer, which local-completions does not do; without it the
    prompts lm-eval sends would lack the <s> the reference scored."""
    src = EVAL / "tiny_mistral"
    tok = json.loads((src / "tokenizer.json").read_text())
    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    tok["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text((src / "tokenizer_config.json").read_text())


def main() -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as tok:
        bos_adding_tokenizer(Path(tok))
        for t in tasks:
            (Path(d) / f"{t['task']}.yaml").write_text(yaml.safe_dump(t, allow_unicode=True))
        res = lm_eval.simple_evaluate(
            model="local-completions",
            model_args=(f"base_url={os.environ['BORA_URL']},model=tiny_mistral,"
                        f"tokenizer={tok},tokenizer_backend=huggingface,"
                        "add_bos_token=True,num_concurrent=4,max_retries=1,batch_size=4"),
            tasks=[t["task"] for t in tasks],
            task_manager=TaskManager(include_path=d),
            log_samples=True,
        )
    problems = []
    checked = 0
    for t in tasks:
        name = t["task"]
        want = REFERENCE["tasks"][name]
        samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
        if len(samples) != len(want["items"]):
            problems.append(f"{name}: {len(samples)} items, the reference has {len(want['items'])}")
            continue
        for i, (s, w) in enumerate(zip(samples, want["items"])):
            if "loglikelihoods" in w:
                got = [r[0][0] for r in s["resps"]]
                for j, (a, b) in enumerate(zip(got, w["loglikelihoods"])):
                    checked += 1
                    if abs(a - b) > 1e-3:
                        problems.append(f"{name} item {i} choice {j}: {a} vs {b}")
                flags = [bool(r[0][1]) for r in s["resps"]]
                if flags != w["is_greedy"]:
                    problems.append(f"{name} item {i}: is_greedy {flags} vs {w['is_greedy']}")
                if s["acc"] != w["acc"]:
                    problems.append(f"{name} item {i}: acc {s['acc']} vs {w['acc']}")
            else:
                checked += 1
                # The HF run decodes the answer's tokens alone, and SentencePiece drops the
                # space that begins a decoded text; the server decodes them after the prompt,
                # as OpenAI's API and vLLM do, so " took" there is "took" here.
                got = s["resps"][0][0]
                if got.removeprefix(" ") != w["generation"]:
                    problems.append(f"{name} item {i}: generated {got!r}, "
                                    f"lm-eval's HF run {w['generation']!r}")
        for metric, v in want["results"].items():
            got = res["results"][name].get(metric)
            if isinstance(got, float) and abs(got - v) > 1e-9:
                problems.append(f"{name}: {metric} {got} vs {v}")
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(f"lm-eval through bora serve: {checked} log-likelihoods and generations match")


if __name__ == "__main__":
    main()
