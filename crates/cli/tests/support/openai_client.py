#!/usr/bin/env python3
"""Drives a running `bora serve` with the real openai Python client (the server's address in
OPENAI_BASE_URL, its key in OPENAI_API_KEY). Exits non-zero, saying what failed, when the
server does not behave as the OpenAI API does."""

import math
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

# Log-probabilities of a chat answer: one entry per token, the greedy token on top, the
# alternatives sorted, and the tokens spelling the answer.
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0,
                                   logprobs=True, top_logprobs=3)
content = r.choices[0].logprobs.content
assert len(content) == r.usage.completion_tokens, (len(content), r.usage)
assert "".join(t.token for t in content) == r.choices[0].message.content, content
for t in content:
    tops = [x.logprob for x in t.top_logprobs]
    assert len(tops) == 3 and tops == sorted(tops, reverse=True), t
    assert abs(t.logprob - tops[0]) < 1e-6 and t.token == t.top_logprobs[0].token, t
    assert sum(math.exp(x) for x in tops) <= 1.0 + 1e-5, t
# The tokens' bytes spell the answer (a character split over byte tokens included).
assert b"".join(bytes(t.bytes) for t in content).decode() == r.choices[0].message.content, content

# echo + logprobs scores the prompt: the first token has none, every other one does.
e = client.completions.create(model=model, prompt="Once upon a time", max_tokens=1, temperature=0,
                              echo=True, logprobs=2)
lp = e.choices[0].logprobs
assert e.choices[0].text.startswith("Once upon a time"), e
assert len(lp.tokens) == e.usage.prompt_tokens + 1 == len(lp.token_logprobs), (lp, e.usage)
assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, lp
assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:]), lp
assert all(len(t) >= 2 for t in lp.top_logprobs[1:]) and lp.text_offset == sorted(lp.text_offset), lp
# The generated token's log-probability is the same with or without echo.
g = client.completions.create(model=model, prompt="Once upon a time", max_tokens=1, temperature=0, logprobs=2)
assert abs(g.choices[0].logprobs.token_logprobs[0] - lp.token_logprobs[-1]) < 1e-4, (g, lp)

# n: several choices, indexed; greedy ones agree, seeded ones reproduce.
r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=7, temperature=0, n=2)
assert [c.index for c in r.choices] == [0, 1] and r.choices[0].text == r.choices[1].text == text, r
assert r.usage.completion_tokens == 14, r.usage
a = client.completions.create(model=model, prompt="The", max_tokens=10, temperature=1.0, n=3, seed=11)
b = client.completions.create(model=model, prompt="The", max_tokens=10, temperature=1.0, n=3, seed=11)
assert [c.text for c in a.choices] == [c.text for c in b.choices], (a, b)
assert len({c.text for c in a.choices}) > 1, a
# Streamed with n = 2 and usage: each index's pieces add up to the answer.
pieces = {0: "", 1: ""}
usage = None
for chunk in client.completions.create(model=model, prompt="Once upon a time", max_tokens=7, temperature=0,
                                       n=2, stream=True, stream_options={"include_usage": True}):
    for c in chunk.choices:
        pieces[c.index] += c.text
    usage = chunk.usage or usage
assert pieces == {0: text, 1: text}, pieces
assert usage.completion_tokens == 14, usage

# Penalties: accepted within OpenAI's range; the same answer at 0; refused outside it.
p0 = client.completions.create(model=model, prompt="1 2 3", max_tokens=12, temperature=0,
                               frequency_penalty=0, presence_penalty=0)
p1 = client.completions.create(model=model, prompt="1 2 3", max_tokens=12, temperature=0,
                               frequency_penalty=2, presence_penalty=2,
                               extra_body={"repetition_penalty": 1.3})
base_text = client.completions.create(model=model, prompt="1 2 3", max_tokens=12, temperature=0).choices[0].text
assert p0.choices[0].text == base_text, (p0, base_text)
assert p1.usage.completion_tokens == 12, p1
# Greedy, this model repeats "кло"; the penalties steer it elsewhere.
assert p1.choices[0].text != base_text, (p1, base_text)
try:
    client.completions.create(model=model, prompt="x", max_tokens=5, frequency_penalty=3)
    raise SystemExit("a frequency penalty of 3 was accepted")
except openai.BadRequestError as e:
    assert "frequency" in str(e), e

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
