#!/usr/bin/env python3
"""Drives a running `bora serve` with the real openai Python client (the server's address in
OPENAI_BASE_URL, its key in OPENAI_API_KEY). Exits non-zero, saying what failed, when the
server does not behave as the OpenAI API does."""

import os
import sys

import openai

base, key = os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
model = client.models.list().data[0].id

# Chat, non-streaming and streaming: the same greedy text.
msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=10, temperature=0)
whole = r.choices[0].message.content
assert r.choices[0].message.role == "assistant", r
assert r.choices[0].finish_reason in ("stop", "length"), r
assert r.usage.completion_tokens <= 10 and r.usage.prompt_tokens > 0, r.usage
parts = []
for chunk in client.chat.completions.create(model=model, messages=msgs, max_tokens=10, temperature=0, stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
assert "".join(parts) == whole, (parts, whole)

# Completions with max_tokens.
c = client.completions.create(model=model, prompt="Once upon a time", max_tokens=7, temperature=0)
assert c.usage.completion_tokens == 7 and c.choices[0].finish_reason == "length", c
text = c.choices[0].text

# A stop string taken from that answer: the answer ends before it, finish_reason "stop".
assert len(text.strip()) >= 4, f"too short an answer to take a stop string from: {text!r}"
stop = text[len(text) // 2 : len(text) // 2 + 3]
s = client.completions.create(model=model, prompt="Once upon a time", max_tokens=7, temperature=0, stop=[stop])
assert s.choices[0].finish_reason == "stop", s
assert stop not in s.choices[0].text and text.startswith(s.choices[0].text), (stop, s.choices[0].text, text)

# Sampling with a seed is reproducible; another seed may differ.
a = client.completions.create(model=model, prompt="The", max_tokens=12, temperature=1.0, seed=7)
b = client.completions.create(model=model, prompt="The", max_tokens=12, temperature=1.0, seed=7)
assert a.choices[0].text == b.choices[0].text, (a, b)

# An invalid request: a clear 400.
try:
    client.completions.create(model=model, prompt="x", max_tokens=5, temperature=-2)
    raise SystemExit("a negative temperature was accepted")
except openai.BadRequestError as e:
    assert "temperature" in str(e), e

# A wrong key: 401.
try:
    openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    raise SystemExit("a wrong API key was accepted")
except openai.AuthenticationError:
    pass

print("openai client: all checks passed")
