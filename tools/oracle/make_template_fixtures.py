#!/usr/bin/env python3
"""Jinja chat templates as transformers renders them: the oracle for bora's template support
(tests/fixtures/chat/transformers_templates.json).

Usage:  python tools/oracle/make_template_fixtures.py

Two tokenizers with templates:
  smollm2   the demo model's GGUF (its own tokenizer.chat_template, ChatML), loaded by
            transformers from the GGUF file;
  jinja_v1  tests/fixtures/chat/jinja_v1/: the Mistral v1 tokenizer.json with a template
            written here in the style of Mistral-7B-Instruct-v0.1's ([INST] … [/INST] as
            text, roles must alternate, raise_exception otherwise), in tokenizer_config.json.
For each conversation: apply_chat_template(tokenize=False) and (tokenize=True) with
add_generation_prompt=True, or continue_final_message=True when the last message is an
assistant prefix; or the error the template raises.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/chat/transformers_templates.json"
V1_DIR = ROOT / "tests/fixtures/chat/jinja_v1"

V1_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'].strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)

CONVERSATIONS = {
    "one turn": [{"role": "user", "content": "Hello!"}],
    "many turns": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"},
                   {"role": "user", "content": "  Tell me a joke.  "}],
    "unicode": [{"role": "user", "content": "Ünïcödé — 😀 日本語"}],
    "system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}],
    "continue": [{"role": "user", "content": "Write a haiku."},
                 {"role": "assistant", "content": "Autumn moonlight", "prefix": True}],
    "not alternating": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
}


def main() -> None:
    V1_DIR.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((ROOT / "tests/fixtures/tokenizer_v1/tokenizer_config.json").read_text())
    cfg["chat_template"] = V1_TEMPLATE
    (V1_DIR / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    smol = subprocess.run([str(ROOT / "tools/fetch-demo-model.sh")], capture_output=True, text=True,
                          check=True).stdout.strip()
    toks = {
        "smollm2": AutoTokenizer.from_pretrained(str(Path(smol).parent), gguf_file=Path(smol).name),
        "jinja_v1": AutoTokenizer.from_pretrained(str(V1_DIR)),
    }
    out = {"cases": []}
    for name, messages in CONVERSATIONS.items():
        expected = {}
        for k, t in toks.items():
            hf_messages = [{kk: v for kk, v in m.items() if kk != "prefix"} for m in messages]
            cont = bool(messages[-1].get("prefix"))
            kw = dict(continue_final_message=True) if cont else dict(add_generation_prompt=True)
            try:
                text = t.apply_chat_template(hf_messages, tokenize=False, **kw)
                enc = t.apply_chat_template(hf_messages, tokenize=True, **kw)
                ids = enc["input_ids"] if not isinstance(enc, list) else enc
                expected[k] = {"text": text, "ids": list(ids)}
            except Exception as e:  # noqa: BLE001 - the template's own error is the outcome
                expected[k] = {"error": f"{type(e).__name__}: {e}"}
        out["cases"].append({"name": name, "messages": messages, "expected": expected})
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    for c in out["cases"]:
        print(c["name"], {k: ("ERR " + v["error"][:50] if "error" in v else repr(v["text"][:60])) for k, v in c["expected"].items()})


if __name__ == "__main__":
    main()
