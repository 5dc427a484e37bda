#!/usr/bin/env python3
"""llama.cpp on a GGUF that `bora quantize` wrote from a safetensors folder: the oracle for
writing checkpoints (with their tokenizer) as GGUF.

Usage:  python tools/oracle/make_hf_to_gguf_fixture.py [NAME...]   (after cargo build --release;
        NAMEs limit the run to those fixtures, e.g. hf_to_gguf_tokenizer_json)

Inputs, each with the Mistral v1 tokenizer.model:
- tests/fixtures/eval/tiny_mistral (transformers' tiny Mistral, BF16, tied embeddings), giving
  tests/fixtures/eval/hf_to_gguf.json and hf_to_gguf.{f32,q8_0}.logits.f32.bin;
- tests/fixtures/eval/tiny_mixtral (a tiny Mixtral, 4 experts, top 2, BF16, tied embeddings,
  made here from a fixed seed), giving hf_to_gguf_mixtral.json and
  hf_to_gguf_mixtral.{f32,q8_0}.logits.f32.bin;
- tests/fixtures/eval/tiny_tekken (a tiny Mistral made here, vocabulary 2000, with a tekken.json
  cut from mistral-common's tekken_240911.json to its 1000 special tokens and first 1000
  ranks, instead of the v1 tokenizer.model), giving hf_to_gguf_tekken.json and
  hf_to_gguf_tekken.{f32,q8_0}.logits.f32.bin; mistral-common's Tekkenizer on that file must
  give the prompt the ids llama.cpp gives it from the GGUF vocabulary;
- tests/fixtures/eval/tiny_tekken again, its tekken.json replaced by the tokenizer.json (and
  tokenizer_config.json) transformers converts it to (`convert_tekken_tokenizer`, kept in
  tests/fixtures/eval/tekken_tokenizer_json): a byte-level BPE, written as llama.cpp's `gpt2`
  vocabulary with the `tekken` pre-tokenizer, giving hf_to_gguf_bytelevel.json and its
  logits; llama.cpp's ids from that GGUF must equal transformers' from the tokenizer.json (kept
  in the fixture, for the prompt and the plain texts of tokenizer_v1/cases.json) and, for the
  prompt, mistral-common's from the tekken.json (less its BOS: the converted tokenizer adds
  none, and the GGUF says so);
- tests/fixtures/eval/tiny_mistral again, with no tokenizer.model: its tokenizer.json (the v1
  vocabulary as transformers writes it) is written as a `llama` vocabulary with scores from the
  merge ranks, giving hf_to_gguf_tokenizer_json.json and its logits; llama.cpp's ids from that
  GGUF must equal transformers' from the tokenizer.json for the prompt and for every text of
  tests/fixtures/tokenizer_v1/cases.json.
`bora quantize DIR OUT.gguf --type f32` and `--type q8_0` write the files (deterministic: the
test rewrites them and checks the SHA-256 recorded here); llama.cpp (llama-cpp-python, F32 KV
cache, plain kernels) tokenizes a prompt with the file's own vocabulary and computes its
logits: the argmax of every position and the full rows of the last 4.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_gguf_llamacpp import llama_logits  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EVAL = ROOT / "tests/fixtures/eval"
LAST = 4  # positions whose full logits are kept
PROMPT = "The sliding window attention of Mistral 7B, explained: Ünïcode too."
MIXTRAL_SEED = 5151


# The tiny models' common shape: 2 layers, hidden 32, GQA 4/2, tied embeddings.
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, sliding_window=None,
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


def save_tiny(folder: Path, cfg_cls: str, cfg: dict, seed: int) -> None:
    """A random model from a fixed seed, saved in BF16 (exactly: init_weights rounds to it)."""
    import torch
    from make_tiny_models import build_model, init_weights

    torch.manual_seed(seed)
    model = build_model(cfg_cls, dict(TINY, **cfg))
    init_weights(model, seed)
    if folder.exists():
        shutil.rmtree(folder)
    model.to(torch.bfloat16).save_pretrained(folder)


def make_tiny_mixtral(folder: Path) -> None:
    save_tiny(folder, "MixtralConfig",
              dict(vocab_size=32000, num_local_experts=4, num_experts_per_tok=2, rope_theta=1e6,
                   rms_norm_eps=1e-5, router_jitter_noise=0.0, output_router_logits=False),
              MIXTRAL_SEED)


TEKKEN_SEED = 6161
TEKKEN_RANKS = 1000


def make_tiny_tekken(folder: Path) -> None:
    import mistral_common

    full = json.loads((Path(mistral_common.__file__).parent / "data/tekken_240911.json").read_text())
    n_special = full["config"]["default_num_special_tokens"]
    cut = {"config": dict(full["config"], num_vocab_tokens=TEKKEN_RANKS,
                          default_vocab_size=n_special + TEKKEN_RANKS),
           "vocab": full["vocab"][:TEKKEN_RANKS]}
    save_tiny(folder, "MistralConfig", dict(vocab_size=n_special + TEKKEN_RANKS, rope_theta=1e6),
              TEKKEN_SEED)
    (folder / "tekken.json").write_text(json.dumps(cut, ensure_ascii=False) + "\n")


def make_tekken_tokenizer_json(dst: Path) -> None:
    """transformers' conversion of tiny_tekken's tekken.json to a tokenizer.json."""
    from transformers.integrations.mistral import convert_tekken_tokenizer

    tok = convert_tekken_tokenizer(str(EVAL / "tiny_tekken/tekken.json"))
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        dst.mkdir(parents=True, exist_ok=True)
        for name in ["tokenizer.json", "tokenizer_config.json"]:
            shutil.copy(Path(d) / name, dst / name)


def main() -> None:
    only = set(sys.argv[1:])
    if not only:
        make_tiny_mixtral(EVAL / "tiny_mixtral")
        make_tiny_tekken(EVAL / "tiny_tekken")
    if not only or "hf_to_gguf_bytelevel" in only:
        make_tekken_tokenizer_json(EVAL / "tekken_tokenizer_json")
    v1 = ROOT / "tests/fixtures/tokenizer_v1/tokenizer.model"
    for src, name, spm in [(EVAL / "tiny_mistral", "hf_to_gguf", v1),
                           (EVAL / "tiny_mixtral", "hf_to_gguf_mixtral", v1),
                           (EVAL / "tiny_tekken", "hf_to_gguf_tekken", None),
                           (EVAL / "tiny_mistral", "hf_to_gguf_tokenizer_json", None),
                           (EVAL / "tiny_tekken", "hf_to_gguf_bytelevel", None)]:
        if not only or name in only:
            write_fixture(src, name, spm)


def transformers_ids_agree(folder: Path, gguf: Path, keep: list | None = None) -> int:
    """llama.cpp's ids from the GGUF against transformers' from the folder's tokenizer.json,
    for the prompt and every text of tokenizer_v1/cases.json (but those spelling one of this
    tokenizer's special tokens, which transformers reads as that token even in plain text);
    returns how many, and
    appends each text with its ids to `keep`."""
    from llama_cpp import Llama
    from transformers import PreTrainedTokenizerFast
    hf = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    specials = [t.content for t in hf.added_tokens_decoder.values() if t.special]
    texts = [PROMPT] + [c["text"] for c in json.loads(
        (ROOT / "tests/fixtures/tokenizer_v1/cases.json").read_text())
        if c["text"] and "contains_special_literal" not in c
        and not any(sp in c["text"] for sp in specials)]
    for text in texts:
        ours = llm.tokenize(text.encode(), add_bos=False, special=False)
        want = hf.encode(text, add_special_tokens=False)
        assert ours == want, f"{text!r}: llama.cpp {ours} vs transformers {want}"
        if keep is not None:
            keep.append({"text": text, "ids": want})
    return len(texts)


def write_fixture(src: Path, name: str, spm: Path | None) -> None:
    from llama_cpp import Llama
    out: dict = {"prompt": PROMPT, "logits_of_last": LAST, "files": {}}
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "model"
        shutil.copytree(src, folder)
        if name == "hf_to_gguf_bytelevel":
            (folder / "tekken.json").unlink()
            for f in (EVAL / "tekken_tokenizer_json").iterdir():
                shutil.copy(f, folder / f.name)
        if spm is not None:
            shutil.copy(spm, folder / "tokenizer.model")
        for ftype in ["f32", "q8_0"]:
            gguf = Path(d) / f"out.{ftype}.gguf"
            subprocess.run([str(ROOT / "target/release/bora"), "quantize", str(folder), str(gguf),
                            "--type", ftype], check=True)
            llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
            ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=False)
            del llm
            if name == "hf_to_gguf_bytelevel":
                # The converted tokenizer adds no BOS (no add_bos_token, a ByteLevel
                # post-processor), and the GGUF says so: llama.cpp's ids are transformers'
                # (special tokens on) and mistral-common's without its BOS.
                from mistral_common.tokens.tokenizers.tekken import Tekkenizer
                from transformers import PreTrainedTokenizerFast
                hf = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
                assert ids == hf.encode(PROMPT), f"llama.cpp {ids} vs transformers"
                want = Tekkenizer.from_file(EVAL / "tiny_tekken/tekken.json").encode(
                    PROMPT, bos=False, eos=False)
                assert ids == want, f"llama.cpp {ids} vs mistral-common {want}"
                texts: list = []
                out["transformers_texts_agreeing"] = transformers_ids_agree(folder, gguf, texts)
                out["transformers_ids"] = texts
            elif (folder / "tokenizer.json").is_file() and spm is None:
                out["transformers_texts_agreeing"] = transformers_ids_agree(folder, gguf)
            elif spm is None:
                from mistral_common.tokens.tokenizers.tekken import Tekkenizer
                want = Tekkenizer.from_file(folder / "tekken.json").encode(PROMPT, bos=True, eos=False)
                assert ids == want, f"llama.cpp {ids} vs mistral-common {want}"
            logits = llama_logits(gguf, ids)
            logits_name = f"{name}.{ftype}.logits.f32.bin"
            logits[-LAST:].astype("<f4").tofile(EVAL / logits_name)
            out["ids"] = ids
            out["files"][ftype] = {
                "sha256": hashlib.sha256(gguf.read_bytes()).hexdigest(),
                "argmax": [int(x) for x in logits.argmax(axis=1)],
                "logits_file": logits_name,
            }
    (EVAL / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v["sha256"] for k, v in out["files"].items()}))


if __name__ == "__main__":
    main()
