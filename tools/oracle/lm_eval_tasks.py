"""lm-evaluation-harness task configurations over the sample data sets in tests/fixtures/eval:
lm-eval's own MMLU, GSM8K and HumanEval settings with the data swapped for local files, and a
generic multiple-choice task. Shared by the oracle (make_eval_fixtures.py, HF backend) and the
server test that runs lm-eval's local-completions model against `bora serve`."""

from __future__ import annotations

from pathlib import Path


def mmlu_tasks(data: Path, shots: int) -> list[dict]:
    tasks = []
    for test in sorted((data / "test").glob("*_test.csv")):
        subject = test.name[: -len("_test.csv")]
        tasks.append({
            "task": f"mmlu_sample_{subject}",
            "dataset_path": "csv",
            "dataset_kwargs": {
                "data_files": {"dev": str(data / "dev" / f"{subject}_dev.csv"), "test": str(test)},
                "column_names": ["question", "A", "B", "C", "D", "answer"],
                "header": None,
            },
            "test_split": "test",
            "fewshot_split": "dev",
            "fewshot_config": {"sampler": "first_n"},
            "num_fewshot": shots,
            "output_type": "multiple_choice",
            "description": "The following are multiple choice questions (with answers) about "
                           f"{subject.replace('_', ' ')}.\n\n",
            "doc_to_text": "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\nAnswer:",
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer.strip())}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        })
    return tasks


def other_tasks(evals: Path, gsm8k_shots: int, gsm8k_tokens: int, humaneval_tokens: int,
                humaneval_stop: list[str]) -> list[dict]:
    js = lambda **files: {"data_files": {k: str(evals / v) for k, v in files.items()}}  # noqa: E731
    return [
        {
            "task": "mc_sample",
            "dataset_path": "json",
            "dataset_kwargs": js(test="mc.jsonl"),
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "Question: {{question}}\nAnswer:",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{answer}}",
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        },
        {
            "task": "gsm8k_sample",
            "dataset_path": "json",
            "dataset_kwargs": js(train="gsm8k_train.jsonl", test="gsm8k_test.jsonl"),
            "training_split": "train",
            "fewshot_split": "train",
            "test_split": "test",
            "fewshot_config": {"sampler": "first_n"},
            "num_fewshot": gsm8k_shots,
            "output_type": "generate_until",
            "doc_to_text": "Question: {{question}}\nAnswer:",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False,
                                  "temperature": 0.0, "max_gen_toks": gsm8k_tokens},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        },
        {
            "task": "humaneval_sample",
            "dataset_path": "json",
            "dataset_kwargs": js(test="humaneval.jsonl"),
            "test_split": "test",
            "output_type": "generate_until",
            "doc_to_text": "{{prompt}}",
            "doc_to_target": "{{canonical_solution}}",
            "generation_kwargs": {"until": humaneval_stop, "do_sample": False,
                                  "max_gen_toks": humaneval_tokens},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        },
    ]
