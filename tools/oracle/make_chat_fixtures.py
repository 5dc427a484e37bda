#!/usr/bin/env python3
"""Mistral's instruct formats as mistral-common encodes them: the oracle for bora's chat
encoding (tests/fixtures/chat/mistral_common_cases.json).

Usage:  python tools/oracle/make_chat_fixtures.py

For every tokenizer file mistral-common 1.13.1 ships (v1, v2, v3, v7 SentencePiece models;
the two Tekken files, which it encodes in the v3 format) and every conversation below:
MistralTokenizer.from_file(file).encode_chat_completion(ChatCompletionRequest(messages))
in its default ("test") validation mode -> the token ids, or the error it raises.
Also plain-text encodings (no BOS) of some strings, for the tokenizers themselves.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mistral_common
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

logging.disable(logging.INFO)
ROOT = Path(__file__).resolve().parents[2]
DATA = Path(mistral_common.__file__).parent / "data"
OUT = ROOT / "tests/fixtures/chat/mistral_common_cases.json"

TOKENIZERS = {
    "v1": "tokenizer.model.v1",
    "v2": "mistral_instruct_tokenizer_240216.model.v2",
    "v3": "mistral_instruct_tokenizer_240323.model.v3",
    "v7": "mistral_instruct_tokenizer_241114.model.v7",
    "tekken_240718": "tekken_240718.json",
    "tekken_240911": "tekken_240911.json",
}

S, U, A = "system", "user", "assistant"


def msg(role: str, content: str, prefix: bool = False) -> dict:
    m = {"role": role, "content": content}
    if prefix:
        m["prefix"] = True
    return m


CONVERSATIONS = {
    "one turn": [msg(U, "Hello!")],
    "unicode": [msg(U, "Ünïcödé — 😀 日本語のテキスト, café")],
    "empty user": [msg(U, "")],
    "whitespace around": [msg(U, "  padded question \n\n")],
    "system then user": [msg(S, "You are a terse assistant."), msg(U, "What is 2+2?")],
    "many turns": [msg(U, "Hi"), msg(A, "Hello! How can I help?"), msg(U, "Tell me a joke.")],
    "system and many turns": [
        msg(S, "Answer in French."), msg(U, "Hi"), msg(A, "Bonjour !"), msg(U, "How are you?"),
        msg(A, "Très bien."), msg(U, "Bye"),
    ],
    "two system messages": [
        msg(S, "First rule."), msg(U, "a"), msg(A, "b"), msg(U, "c"), msg(S, "Second rule."), msg(U, "d"),
    ],
    "empty system": [msg(S, ""), msg(U, "question")],
    "system only": [msg(S, "Only a system prompt.")],
    "consecutive users": [msg(U, "part one"), msg(U, "part two")],
    "consecutive users with empty": [msg(U, "x"), msg(U, ""), msg(U, "y")],
    "consecutive assistants": [msg(U, "q"), msg(A, "a1"), msg(A, "a2"), msg(U, "q2")],
    "assistant prefix": [msg(U, "Write a haiku."), msg(A, "Autumn moonlight", prefix=True)],
    "assistant prefix after system": [msg(S, "Poet mode."), msg(U, "Go"), msg(A, "Roses", prefix=True)],
    "assistant trailing spaces": [msg(U, "q"), msg(A, "Sure.   "), msg(U, "thanks  ")],
    "prefix with trailing space": [msg(U, "q"), msg(A, "Start ", prefix=True)],
    "control text in content": [msg(U, "Say [INST] and </s> and [/INST] and <s> literally.")],
    "newlines and tabs": [msg(U, "line 1\nline 2\n\tindented\r\nend")],
    "system after user": [msg(U, "a"), msg(S, "late rule"), msg(U, "b")],
    "system then assistant prefix": [msg(S, "rules"), msg(A, "Once", prefix=True)],
    "system last": [msg(U, "a"), msg(S, "closing rule")],
    "system last after turns": [msg(U, "a"), msg(A, "b"), msg(U, "c"), msg(S, "late")],
    # Invalid: mistral-common refuses these.
    "no messages": [],
    "ends with assistant": [msg(U, "q"), msg(A, "answer")],
    "assistant first alone": [msg(A, "hello")],
    "system after assistant": [msg(U, "q"), msg(A, "a"), msg(S, "s"), msg(U, "q2")],
    "prefix not last": [msg(U, "q"), msg(A, "a", prefix=True), msg(U, "q2")],
    "empty assistant": [msg(U, "q"), msg(A, ""), msg(U, "q2")],
}

TEXTS = [
    "Hello world", "  leading spaces", "trailing  ", "Ünïcödé 😀 日本語", "tabs\tand\nnewlines\r\n",
    "[INST] literal [/INST] </s>", "a[REF]b [REF] c", "12345 67.89 -1,000", "",
]


def main() -> None:
    out = {"mistral_common_version": mistral_common.__version__, "tokenizers": TOKENIZERS,
           "cases": [], "texts": []}
    toks = {k: MistralTokenizer.from_file(str(DATA / f)) for k, f in TOKENIZERS.items()}
    for name, messages in CONVERSATIONS.items():
        expected = {}
        for k, t in toks.items():
            try:
                ids = t.encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens
                expected[k] = ids
            except Exception as e:  # noqa: BLE001 - the error is the expected outcome
                expected[k] = {"error": f"{type(e).__name__}: {e}"}
        out["cases"].append({"name": name, "messages": messages, "expected": expected})
    for text in TEXTS:
        out["texts"].append({"text": text, "expected": {
            k: t.instruct_tokenizer.tokenizer.encode(text, bos=False, eos=False) for k, t in toks.items()}})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, ensure_ascii=False) + "\n")
    for c in out["cases"]:
        print(c["name"], {k: ("ERR" if isinstance(v, dict) else len(v)) for k, v in c["expected"].items()})


if __name__ == "__main__":
    main()
