#!/usr/bin/env python3
"""Tokenizer fixtures for Mistral 7B v0.1's SentencePiece tokenizer (tokenizer.model.v1,
shipped inside the mistral-common package) -> tests/fixtures/tokenizer_v1/.

Usage:  python tools/oracle/make_tokenizer_fixtures.py

Writes
  tokenizer.model  copy of mistral_common/data/tokenizer.model.v1 (the oracle's input)
  tokenizer.json   HF `tokenizers` equivalent, built here with the tokenizers Python API
  vocab.gguf       GGUF holding only the vocabulary metadata, as llama.cpp's converter
                   writes a SentencePiece vocab (tokenizer.ggml.*)
  cases.json       [{"text", "ids", "decoded", "roundtrip", ...}] with sentencepiece as the oracle
  notes.json       normalizer spec, the conversion choices and the verification figures

The oracle is sentencepiece.SentencePieceProcessor.encode(text) (no BOS).
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import sys
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jsonfmt  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT = REPO_ROOT / "tests" / "fixtures" / "tokenizer_v1"
SPACE = "\u2581"  # ▁


def find_model() -> Path:
    spec = importlib.util.find_spec("mistral_common")
    return Path(spec.submodule_search_locations[0]) / "data" / "tokenizer.model.v1"


# ------------------------------------------------------------------ tokenizer.json

def build_hf_tokenizer(proto: sp_pb2.ModelProto) -> Tokenizer:
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    T = sp_pb2.ModelProto.SentencePiece

    # Merges, mimicking SentencePiece BPE: SPM repeatedly merges the adjacent pair whose
    # concatenation is a vocab piece with the highest score (ties: leftmost). An HF merge
    # list ranked by the merged piece's score (desc), then by piece id, reproduces that.
    mergeable = {piece for piece, _, t in pieces if t == T.NORMAL}
    merges = []
    for piece, score, t in pieces:
        if t != T.NORMAL or len(piece) < 2:
            continue
        pid = vocab[piece]
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in mergeable and right in mergeable:
                merges.append((-score, pid, vocab[left], vocab[right], left, right))
    merges.sort()
    merge_pairs = [(m[4], m[5]) for m in merges]

    bpe = models.BPE(vocab=vocab, merges=merge_pairs, unk_token="<unk>", fuse_unk=True, byte_fallback=True,
                     dropout=None)
    tok = Tokenizer(bpe)
    # SentencePiece normalizer "identity" with add_dummy_prefix=true, remove_extra_whitespaces=false:
    # prepend one ▁ to the (non-empty) text, then every space -> ▁. No pre-tokenizer: like SPM,
    # BPE runs over the whole string.
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([
        decoders.Replace(SPACE, " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
        decoders.Strip(" ", 1, 0),
    ])
    # No post-processor: the tokenizer never adds <s> itself (add_special_tokens is a no-op).
    tok.post_processor = None
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p, _, t in pieces
                            if t in (T.UNKNOWN, T.CONTROL)])
    return tok


# -------------------------------------------------------------------- vocab.gguf

def write_vocab_gguf(proto: sp_pb2.ModelProto, path: Path) -> None:
    import gguf

    T = sp_pb2.ModelProto.SentencePiece
    tmap = {T.NORMAL: gguf.TokenType.NORMAL, T.UNKNOWN: gguf.TokenType.UNKNOWN, T.CONTROL: gguf.TokenType.CONTROL,
            T.USER_DEFINED: gguf.TokenType.USER_DEFINED, T.UNUSED: gguf.TokenType.UNUSED, T.BYTE: gguf.TokenType.BYTE}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("mistral-7b-v0.1-tokenizer")
    w.add_tokenizer_model("llama")
    w.add_token_list([p.piece.encode("utf-8") for p in proto.pieces])
    w.add_token_scores([float(p.score) for p in proto.pieces])
    w.add_token_types([int(tmap[p.type]) for p in proto.pieces])
    w.add_bos_token_id(proto.trainer_spec.bos_id)
    w.add_eos_token_id(proto.trainer_spec.eos_id)
    w.add_unk_token_id(proto.trainer_spec.unk_id)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(bool(proto.normalizer_spec.add_dummy_prefix))
    w.add_remove_extra_whitespaces(bool(proto.normalizer_spec.remove_extra_whitespaces))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ------------------------------------------------------------------------- cases

HAND = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ",
    "Hello world", "Hello, world!", " Hello world", "Hello world ", "  Hello  world  ",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure it's fine—isn't it? \"Yes\", they said.",
    "a  b   c    d     e      f       g        h",
    "tab\tseparated\tvalues\t\t\tend",
    "line one\nline two\n\n\nline five\r\nline six\r\n\r\n",
    "def f(x):\n    return x * 2  # double\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}\n",
    '{"key": [1, 2.5, -3e10, true, null], "nested": {"a": "b"}}',
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
    "0", "7", "42", "3.14159", "1234567890", "12345678901234567890123456789", "-0.000001", "1,000,000.00",
    "Phone: +1 (555) 123-4567, ZIP 90210",
    "!!!???...;;;:::", "@#$%^&*()_+-=[]{}|\\/<>~`",
    "café naïve résumé façade jalapeño", "Ünïcödé ÀÉÎÕÜ ßẞ",
    "Γειά σου Κόσμε", "Привет, мир! Как дела?", "مرحبا بالعالم", "שלום עולם",
    "你好，世界！", "日本語のテキストです。カタカナもひらがなも。", "안녕하세요 세계",
    "हिन्दी पाठ", "ภาษาไทย", "Tiếng Việt có dấu",
    "emoji 😀😃😄 done", "👍🏽 👍🏿", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "🇫🇷🇯🇵",
    "𓀀𓀁 hieroglyphs", "𝐀𝐁𝐂 math bold", "\ue000\uf8ff private use", "zero\u200bwidth\u200djoiner",
    "\ufeffBOM at start", "combining e\u0301 vs \u00e9", "\u0001\u0002\u0007 control chars",
    "<s>", "</s>", "<unk>", "<s>Hello</s>", "text with <s> inside and </s> too",
    "[INST] What is 2+2? [/INST]",
    "mixed: English, Русский, 中文, العربية, 日本語 and emoji 🎉",
    "ALL CAPS SENTENCE HERE", "camelCaseIdentifierName snake_case_name kebab-case-name",
    "https://example.com/path?query=1&other=two#frag", "user@example.org",
    "trailing newline\n", "\n\nleading newlines", "    indented four", "\t\tindented tabs",
    "▁ literal metaspace ▁▁ chars", "a" * 50, "ab" * 40, " " * 16 + "x",
]

POOLS = {
    "en": ["the", "of", "and", "inference", "engine", "token", "model", "Rust", "quickly", "hello", "world",
           "attention", "window", "sliding", "cache", "tensor", "quantized", "weights", "Mistral", "Mixtral"],
    "num": ["0", "1", "42", "2024", "3.14", "1e-5", "65536", "007", "9999999999", "-17", "0x1F", "½"],
    "punct": [".", ",", "!", "?", ";", ":", "...", "—", "-", "(", ")", "[", "]", "{", "}", "\"", "'", "`", "#", "/"],
    "ws": [" ", "  ", "   ", "    ", "     ", "      ", "       ", "        ", "\t", "\n", "\r\n", "\n\n", "\n\n\n",
           " \t ", "\u00a0", "\u3000"],
    "acc": ["é", "ñ", "ü", "ø", "å", "ç", "ß", "œ", "ł", "ő", "ž", "ğ"],
    "greek": ["α", "β", "γ", "Ω", "λόγος", "φιλοσοφία"],
    "cyr": ["мир", "привет", "язык", "Ж", "щука", "ёлка"],
    "arabic": ["سلام", "كتاب", "عربي"],
    "hebrew": ["שלום", "ספר"],
    "cjk": ["中", "文", "字", "漢字", "北京", "你好", "机器学习"],
    "kana": ["ひらがな", "カタカナ", "です", "ー", "ァ"],
    "korean": ["한국어", "안녕", "ㅋㅋ"],
    "emoji": ["😀", "🚀", "❤️", "👍🏻", "👩‍💻", "🧑🏾‍🚀", "🏴‍☠️", "✨", "🇩🇪"],
    "rare": ["\U0001f9ff", "\u2603", "\u0f3a", "\u16a0", "\U00010348", "\u2c00", "\ua4d0", "\U0001d11e", "\u0e3f",
             "\U00013000", "\u18a0"],
    "code": ["fn", "let", "mut", "impl", "=>", "->", "::", "()", "{}", "&&", "||", "!=", "==", "+=", "self.",
             "def", "return", "import", "None", "#[derive(Debug)]", "</div>", "<s>", "</s>"],
}


def generated_cases(n: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    keys = sorted(POOLS)
    out = []
    for _ in range(n):
        k = rng.randint(1, 14)
        parts = []
        for _ in range(k):
            pool = POOLS[rng.choice(keys)]
            parts.append(rng.choice(pool))
            r = rng.random()
            if r < 0.55:
                parts.append(" ")
            elif r < 0.7:
                parts.append(rng.choice(POOLS["ws"]))
        s = "".join(parts)
        r = rng.random()
        if r < 0.1:
            s = " " + s
        elif r < 0.2:
            s = s + " "
        out.append(s)
    return out


# -------------------------------------------------------------------------- main

def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    model_path = find_model()
    shutil.copy(model_path, OUT / "tokenizer.model")
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model_path.read_bytes())
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    assert sp.bos_id() == 1 and sp.eos_id() == 2 and sp.unk_id() == 0

    tok = build_hf_tokenizer(proto)
    tok.save(str(OUT / "tokenizer.json"), pretty=False)
    tok = Tokenizer.from_file(str(OUT / "tokenizer.json"))
    tok_literal = Tokenizer.from_file(str(OUT / "tokenizer.json"))
    tok_literal.encode_special_tokens = True

    write_vocab_gguf(proto, OUT / "vocab.gguf")

    texts = HAND + generated_cases(240)
    seen, uniq = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            uniq.append(t)
    specials = ("<s>", "</s>", "<unk>")

    cases, mism_default, mism_literal, dec_mism = [], [], [], []
    for text in uniq:
        ids = sp.encode(text)
        decoded = sp.decode(ids)
        hf = tok.encode(text, add_special_tokens=False).ids
        hf2 = tok.encode(text, add_special_tokens=True).ids
        assert hf == hf2, "tokenizer.json must not add special tokens by itself"
        hf_lit = tok_literal.encode(text, add_special_tokens=False).ids
        case = {"text": text, "ids": ids, "decoded": decoded, "roundtrip": decoded == text}
        if any(s in text for s in specials):
            case["contains_special_literal"] = True
            case["hf_default_ids"] = hf  # tokenizers' default: literal <s> / </s> / <unk> -> special id
        if hf != ids:
            mism_default.append(text)
        if hf_lit != ids:
            mism_literal.append({"text": text, "sp": ids, "hf": hf_lit})
        if tok.decode(ids, skip_special_tokens=False) != decoded:
            dec_mism.append({"text": text, "sp": decoded, "hf": tok.decode(ids, skip_special_tokens=False)})
        cases.append(case)

    # Extra (not stored) stress check on many more generated strings.
    extra = generated_cases(3000, seed=99)
    extra_mism = [t for t in extra if tok_literal.encode(t, add_special_tokens=False).ids != sp.encode(t)]

    (OUT / "cases.json").write_text(jsonfmt.dump_lines(cases), encoding="utf-8")

    unexpected_default = [t for t in mism_default if not any(s in t for s in specials)]
    notes = {
        "source": "mistral_common/data/tokenizer.model.v1 (Mistral 7B v0.1 SentencePiece BPE, 32000 pieces)",
        "sentencepiece_version": spm.__version__,
        "normalizer_spec": {
            "name": proto.normalizer_spec.name,
            "add_dummy_prefix": proto.normalizer_spec.add_dummy_prefix,
            "remove_extra_whitespaces": proto.normalizer_spec.remove_extra_whitespaces,
            "escape_whitespaces": proto.normalizer_spec.escape_whitespaces,
        },
        "trainer_spec": {"model_type": "BPE", "byte_fallback": proto.trainer_spec.byte_fallback,
                         "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": proto.trainer_spec.pad_id},
        "tokenizer_json": (
            "Built with the tokenizers Python API: BPE(vocab = the 32000 SPM pieces with their SPM ids, merges = every "
            "split of a NORMAL piece into two NORMAL pieces, ranked by the merged piece's SPM score desc then id; "
            "byte_fallback=true, fuse_unk=true, unk=<unk>); normalizer = Sequence[Prepend('▁'), Replace(' ', '▁')]; "
            "no pre-tokenizer; decoder = Sequence[Replace('▁',' '), ByteFallback, Fuse, Strip(' ',1,0)]; "
            "NO post-processor (never adds <s>; add_special_tokens has no effect). <unk>=0, <s>=1, </s>=2 are "
            "added tokens with special=true."),
        "special_literal_behaviour": (
            "sentencepiece never turns the literal text '<s>' / '</s>' / '<unk>' into the control ids; it encodes "
            "them as ordinary pieces. tokenizers by default extracts added special tokens from the input, so for the "
            "cases containing them the default encode differs (that is also what Mistral's own HF tokenizer.json "
            "does). With Tokenizer.encode_special_tokens = True (Rust: set_encode_special_tokens(true)) tokenizer.json "
            "matches sentencepiece on every case. cases.json marks those cases with contains_special_literal=true "
            "and stores the default-tokenizers ids as hf_default_ids."),
        "n_cases": len(cases),
        "n_roundtrip_false": sum(1 for c in cases if not c["roundtrip"]),
        "mismatches_default_encode": len(mism_default),
        "mismatches_default_encode_without_special_literals": len(unexpected_default),
        "mismatches_encode_special_tokens_true": len(mism_literal),
        "hf_decode_vs_sp_decode_mismatches": len(dec_mism),
        "extra_unstored_stress_cases": len(extra),
        "extra_unstored_stress_mismatches_encode_special_tokens_true": len(extra_mism),
        "mismatch_details": mism_literal[:20] + [{"text": t} for t in unexpected_default[:20]],
        "decode_mismatch_details": dec_mism[:20],
        "vocab_gguf": ("general.architecture=llama, tokenizer.ggml.model=llama, tokens/scores/token_type "
                       "(1 normal, 2 unknown, 3 control, 6 byte), bos=1, eos=2, unk=0, add_bos_token=true, "
                       "add_eos_token=false, add_space_prefix=%s, remove_extra_whitespaces=%s; no tensors."
                       % (proto.normalizer_spec.add_dummy_prefix, proto.normalizer_spec.remove_extra_whitespaces)),
    }
    jsonfmt.write(OUT / "notes.json", notes)

    # read vocab.gguf back
    import gguf

    r = gguf.GGUFReader(str(OUT / "vocab.gguf"))
    toks = r.fields["tokenizer.ggml.tokens"].contents()
    assert len(toks) == 32000 and toks[1] == "<s>" and toks[3] == "<0x00>"
    tt = r.fields["tokenizer.ggml.token_type"].contents()
    assert tt[0] == 2 and tt[1] == 3 and tt[3] == 6 and tt[1000] == 1
    assert len(r.tensors) == 0

    print(json.dumps({k: notes[k] for k in ("n_cases", "n_roundtrip_false", "mismatches_default_encode",
                                            "mismatches_default_encode_without_special_literals",
                                            "mismatches_encode_special_tokens_true",
                                            "hf_decode_vs_sp_decode_mismatches", "extra_unstored_stress_cases",
                                            "extra_unstored_stress_mismatches_encode_special_tokens_true")}))
    for m in mism_literal[:10]:
        print("MISMATCH", json.dumps(m, ensure_ascii=False))
    for m in dec_mism[:10]:
        print("DECODE MISMATCH", json.dumps(m, ensure_ascii=False))


if __name__ == "__main__":
    main()
