#!/usr/bin/env python3
"""Build the tiny random-weight HF checkpoints in tests/fixtures/tiny/ and their
reference outputs (all-position logits + greedy full-recompute continuation).

Usage:  python tools/oracle/make_tiny_models.py

Deterministic: fixed seeds, single-threaded torch, float32, eager attention,
eager (per-expert loop) Mixtral experts. Rerunning rewrites identical files.
"""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import gguf
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tinylib import (  # noqa: E402
    GREEDY_NEW,
    GREEDY_PROMPT_LEN,
    LOGITS_PROMPT_SEED,
    PROMPT_LEN,
    TINY_DIR,
    VOCAB,
    full_logits,
    greedy_full_recompute,
    load_hf,
    quant_roundtrip_model,
    random_ids,
    setup_torch,
    write_f32,
    write_json,
)

# Required top1-top2 margin at every greedy step (the spec asks for > 1e-3; we use a
# 10x stricter bound so that f32 reordering or f16/bf16 compute can't flip a step).
MIN_MARGIN = 1e-2
# Required gap between the 2nd and 3rd router logit (Mixtral) for every routing
# decision in the reference runs, so the top-2 expert choice is never a near-tie.
MIN_ROUTER_GAP = 1e-3

# name -> (config class name, config kwargs, weight seed)
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    max_position_embeddings=4096,
    bos_token_id=1,
    eos_token_id=2,
)

MODELS = {
    "mistral_swa": (
        "MistralConfig",
        dict(COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=16,
             rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
        101,
    ),
    "mistral_nowin": (
        "MistralConfig",
        dict(COMMON, num_attention_heads=4, num_key_value_heads=1, head_dim=32, sliding_window=None,
             rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False),
        202,
    ),
    "mixtral": (
        "MixtralConfig",
        dict(COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
             num_experts_per_tok=2, sliding_window=None, rope_theta=1e6, rms_norm_eps=1e-5,
             tie_word_embeddings=False, router_jitter_noise=0.0, output_router_logits=False),
        303,
    ),
    "llama_tied": (
        "LlamaConfig",
        dict(COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0,
             rms_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=False, mlp_bias=False),
        404,
    ),
}

SHARDED = {"mistral_nowin": "200KB"}


def build_model(cfg_cls_name: str, cfg_kwargs: dict):
    import transformers

    cfg = getattr(transformers, cfg_cls_name)(**cfg_kwargs)
    arch = {"MistralConfig": "MistralForCausalLM", "MixtralConfig": "MixtralForCausalLM",
            "LlamaConfig": "LlamaForCausalLM"}[cfg_cls_name]
    kwargs = dict(attn_implementation="eager")
    if cfg_cls_name == "MixtralConfig":
        kwargs["experts_implementation"] = "eager"
    model = getattr(transformers, arch)._from_config(cfg, dtype=torch.float32, **kwargs)
    model.eval()
    return model


@torch.no_grad()
def init_weights(model, seed: int) -> None:
    """Own random init with larger spread than HF's default, then round every value
    so it is exactly representable in bf16 AND f16 (so bf16/f16 copies are lossless)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if p.dim() == 1:  # RMSNorm weights
            w = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
        elif "embed_tokens" in name or "lm_head" in name:
            w = 0.25 * torch.randn(p.shape, generator=g)
        elif name.endswith("mlp.gate.weight"):  # Mixtral router
            w = 0.2 * torch.randn(p.shape, generator=g)
        else:
            w = 0.2 * torch.randn(p.shape, generator=g)
        p.data.copy_(round_bf16_f16(w))


def round_bf16_f16(w: torch.Tensor) -> torch.Tensor:
    w = w.to(torch.float32).to(torch.bfloat16).to(torch.float32)
    w[w.abs() < 1e-4] = 0.0
    assert torch.equal(w.to(torch.bfloat16).to(torch.float32), w)
    assert torch.equal(w.to(torch.float16).to(torch.float32), w)
    return w


def router_min_gap(model, ids: list[int]) -> float:
    """Smallest gap between the k-th and (k+1)-th router logit over all tokens and
    layers (how close the top-k expert selection is to a tie; softmax is monotonic so the
    logit gap is what matters for numerical robustness)."""
    gaps = []
    hooks = []

    def hook(mod, inp, out):
        router_logits = out[0]
        s = torch.sort(router_logits.float(), dim=-1, descending=True).values
        k = mod.top_k
        gaps.append(float((s[:, k - 1] - s[:, k]).min()))

    for layer in model.model.layers:
        hooks.append(layer.mlp.gate.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]), use_cache=False)
    for h in hooks:
        h.remove()
    return min(gaps)


def is_moe(model) -> bool:
    return hasattr(model.model.layers[0].mlp, "experts")


def pick_greedy_prompt(models: list, base_seed: int, min_margin: float = MIN_MARGIN):
    """Deterministically search prompt seeds base_seed, base_seed+1, ... until the greedy
    full-recompute run of every model in `models` has min margin > min_margin (and, for
    MoE models, every routing decision over the final sequence has gap > MIN_ROUTER_GAP)."""
    for seed in range(base_seed, base_seed + 1000):
        prompt = random_ids(seed, GREEDY_PROMPT_LEN)
        results = []
        ok = True
        for m in models:
            gen, mm, _ = greedy_full_recompute(m, prompt, GREEDY_NEW)
            results.append((gen, mm))
            if mm <= min_margin or (is_moe(m) and router_min_gap(m, prompt + gen) <= MIN_ROUTER_GAP):
                ok = False
                break
        if ok:
            return seed, prompt, results
    raise RuntimeError("no greedy prompt seed with margin > %g" % min_margin)


def main() -> None:
    setup_torch()
    TINY_DIR.mkdir(parents=True, exist_ok=True)
    prompt_ids = random_ids(LOGITS_PROMPT_SEED, PROMPT_LEN)
    summary = {}

    for name, (cfg_cls, cfg_kwargs, wseed) in MODELS.items():
        model = build_model(cfg_cls, cfg_kwargs)
        init_weights(model, wseed)
        if is_moe(model):
            # Pick the first weight seed whose routing on the logits prompt has no near-tie,
            # both for the f32 weights and for their Q8_0 round trip (mixtral.q8_0.gguf).
            def routing_ok():
                q8 = quant_roundtrip_model(model, gguf.GGMLQuantizationType.Q8_0)
                return min(router_min_gap(model, prompt_ids), router_min_gap(q8, prompt_ids)) > MIN_ROUTER_GAP
            while not routing_ok():
                wseed += 1
                init_weights(model, wseed)
        out_dir = TINY_DIR / name
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        if name in SHARDED:
            model.save_pretrained(str(out_dir), max_shard_size=SHARDED[name])
        else:
            model.save_pretrained(str(out_dir))

        # Reload from disk: the references are computed from exactly what was saved.
        model = load_hf(out_dir)
        logits = full_logits(model, prompt_ids)
        assert logits.shape == (PROMPT_LEN, VOCAB)
        write_f32(out_dir / "logits.f32.bin", logits)

        greedy_models = [model]
        if name == "mistral_swa":
            # One greedy prompt for f32, Q8_0 and Q4_0 (mistral_swa.{q8_0,q4_0}.greedy.json).
            greedy_models += [quant_roundtrip_model(model, gguf.GGMLQuantizationType.Q8_0),
                              quant_roundtrip_model(model, gguf.GGMLQuantizationType.Q4_0)]
        gseed, gprompt, gres = pick_greedy_prompt(greedy_models, 5000 + MODELS[name][2])
        gen, mm = gres[0]

        notes = [
            f"Tiny random-weight {type(model).__name__} (weight seed {wseed}), float32 compute, "
            "attn_implementation='eager'" + (", experts_implementation='eager' (per-expert loop)" if cfg_cls == "MixtralConfig" else "") + ".",
            "All weights are rounded to values exactly representable in both bf16 and f16 (|w|<1e-4 -> 0).",
            f"logits.f32.bin: raw little-endian f32 [{PROMPT_LEN}, {VOCAB}], one full forward over prompt_ids (no cache); "
            f"prompt_ids = torch.randint(0,{VOCAB},({PROMPT_LEN},), Generator seed {LOGITS_PROMPT_SEED}).",
            f"greedy: {GREEDY_NEW} tokens by full recomputation each step (no KV cache), argmax of the last position; "
            f"prompt seed {gseed} (first seed from {5000 + MODELS[name][2]} with every step's top1-top2 margin > {MIN_MARGIN:g}"
            + (", also for the Q8_0 and Q4_0 round-tripped weights" if name == "mistral_swa" else "")
            + (", and every routing decision's 2nd-3rd router logit gap > %g" % MIN_ROUTER_GAP if cfg_cls == "MixtralConfig" else "")
            + "); "
            f"min top1-top2 margin {mm:.6g}.",
            f"logits std {float(logits.std()):.4f}, mean {float(logits.mean()):.4f}.",
        ]
        info = {"logits_std": float(logits.std()), "greedy_min_margin": mm, "greedy_seed": gseed, "weight_seed": wseed}
        if name == "mistral_swa":
            info["greedy_min_margin_q8_0"] = gres[1][1]
            info["greedy_min_margin_q4_0"] = gres[2][1]

        if name == "mistral_swa":
            # Check that eager attention really applies the sliding window.
            nowin = copy.deepcopy(model)
            nowin.config.sliding_window = None
            for layer in nowin.model.layers:
                layer.self_attn.sliding_window = None
                if hasattr(layer.self_attn.config, "sliding_window"):
                    layer.self_attn.config.sliding_window = None
            logits_nowin = full_logits(nowin, prompt_ids)
            w = cfg_kwargs["sliding_window"]
            d = np.abs(logits - logits_nowin).max(axis=1)
            d_lo, d_hi, d_first = float(d[:w].max()), float(d[w:].min()), float(d[w])
            assert d_lo < 1e-5, d_lo
            assert d_hi > 1e-3, d_hi
            notes.append(
                f"Sliding-window check: recomputing with sliding_window=None gives max|diff| {d_lo:.3g} over positions "
                f"0..{w-1} and per-position max|diff| >= {d_hi:.4g} at every position >= {w} (at position {w}: {d_first:.4g}; "
                f"overall max {float(d.max()):.4g}). HF mask convention: query i attends key j iff i-{w} < j <= i "
                f"(the window of {w} keys includes the query itself).")
            info.update(swa_maxdiff_below_window=d_lo, swa_min_rowdiff_from_window=d_hi, swa_diff_at_window=d_first,
                        swa_maxdiff_overall=float(d.max()))

        if name == "mixtral":
            # Compare the eager per-expert loop against the other expert kernels.
            gap = router_min_gap(model, prompt_ids)
            notes.append(f"Router: softmax over 4 experts, top-2, renormalised. Weight seed chosen as the first from "
                         f"{MODELS[name][2]} whose min gap between 2nd and 3rd router logit over all logits-prompt "
                         f"tokens/layers is > {MIN_ROUTER_GAP:g} for both these weights and their Q8_0 round trip: {gap:.4g}. The greedy prompt also satisfies this over "
                         f"the whole final sequence: {router_min_gap(model, gprompt + gen):.4g}.")
            info["router_min_gap"] = gap
            info["router_min_gap_greedy"] = router_min_gap(model, gprompt + gen)
            info["router_min_gap_q8_0"] = router_min_gap(
                quant_roundtrip_model(model, gguf.GGMLQuantizationType.Q8_0), prompt_ids)
            notes.append(f"For the Q8_0 round trip of these weights (mixtral.q8_0.gguf) the same gap is "
                         f"{info['router_min_gap_q8_0']:.4g}.")
            from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

            for impl in ("batched_mm", "grouped_mm"):
                if impl not in ALL_EXPERTS_FUNCTIONS:
                    continue
                alt = copy.deepcopy(model)
                alt.config._experts_implementation = impl
                for layer in alt.model.layers:
                    layer.mlp.experts.config._experts_implementation = impl
                try:
                    la = full_logits(alt, prompt_ids)
                    diff = float(np.abs(la - logits).max())
                    notes.append(f"experts_implementation='{impl}' differs from eager by max|diff| {diff:.3g}.")
                    info[f"experts_{impl}_maxdiff"] = diff
                except Exception as e:  # pragma: no cover - depends on torch build
                    notes.append(f"experts_implementation='{impl}' could not run on this torch: {type(e).__name__}")

        ref = {
            "prompt_ids": prompt_ids,
            "logits_file": "logits.f32.bin",
            "logits_shape": [PROMPT_LEN, VOCAB],
            "greedy": {"prompt_ids": gprompt, "generated_ids": gen, "min_margin": mm},
            "notes": " ".join(notes),
        }
        write_json(out_dir / "reference.json", ref)
        summary[name] = info
        print(name, info, flush=True)

        if name == "mistral_swa":
            for suffix, dt in (("bf16", torch.bfloat16), ("f16", torch.float16)):
                vdir = TINY_DIR / f"{name}_{suffix}"
                if vdir.exists():
                    shutil.rmtree(vdir)
                vdir.mkdir(parents=True)
                m2 = copy.deepcopy(model).to(dt)
                m2.save_pretrained(str(vdir))
                # Reload, upcast, and check the weights (hence the references) are identical.
                back = load_hf(vdir)
                sd_a, sd_b = model.state_dict(), back.state_dict()
                assert sd_a.keys() == sd_b.keys()
                for k in sd_a:
                    assert torch.equal(sd_a[k], sd_b[k]), k
                lv = full_logits(back, prompt_ids)
                assert np.array_equal(lv, logits), "dtype variant logits differ"
                shutil.copy(out_dir / "logits.f32.bin", vdir / "logits.f32.bin")
                vref = dict(ref)
                vref["notes"] = (f"Same weights as mistral_swa, stored as {suffix.upper()} in model.safetensors "
                                 f"(lossless: every mistral_swa weight is exactly representable in {suffix}). "
                                 "References are those of mistral_swa (f32 compute after upcasting the stored weights). "
                                 + ref["notes"])
                write_json(vdir / "reference.json", vref)
                print(f"{name}_{suffix}: weights identical after reload, logits identical", flush=True)

    write_json(TINY_DIR / "summary_hf.json", summary)


if __name__ == "__main__":
    main()
