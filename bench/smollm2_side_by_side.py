"""bora vs llama.cpp on the demo model (SmolLM2-135M-Instruct Q4_1), same machine, same threads,
run alternately, medians of R rounds. Prefill: a P-token prompt in one pass; decode: N tokens
one at a time (greedy). Needs llama-cpp-python (pip) and a release build of bora.

    python bench/smollm2_side_by_side.py [-p 128] [-n 64] [-t 2] [-r 5]
"""
import argparse
import re
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bora_once(model, prompt_ids, n, threads, extra):
    cmd = [str(ROOT / "target/release/bora"), "run", model, "--ids", ",".join(map(str, prompt_ids)),
           "-n", str(n), "--temp", "0", "--ignore-eos", "--print-ids", "-t", str(threads),
           "--chunk", str(len(prompt_ids))] + extra
    err = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    m = re.search(r"prompt: \d+ tokens, ([\d.]+) tokens/s \| generated: \d+ tokens, ([\d.]+) tokens/s", err)
    return float(m.group(1)), float(m.group(2))


def last_logits(llm):
    import numpy as np
    ptr = llm._ctx.get_logits_ith(-1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def llama_once(llm, prompt_ids, n):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt_ids)
    t1 = time.perf_counter()
    for _ in range(n):
        llm.eval([int(last_logits(llm).argmax())])
    t2 = time.perf_counter()
    return len(prompt_ids) / (t1 - t0), n / (t2 - t1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-r", type=int, default=5)
    a = ap.parse_args()
    model = subprocess.run([str(ROOT / "tools/fetch-demo-model.sh")], capture_output=True, text=True,
                           check=True).stdout.strip()
    import llama_cpp
    from llama_cpp import Llama
    orig = llama_cpp.llama_cpp.llama_model_default_params

    def defaults():  # the plain CPU kernels: this build's AMX path crashes on these machines
        mp = orig()
        mp.use_extra_bufts = False
        return mp

    llama_cpp.llama_cpp.llama_model_default_params = defaults
    llm = Llama(model_path=model, n_ctx=a.p + a.n + 8, n_batch=a.p, n_threads=a.t, verbose=False,
                logits_all=False)
    prompt = [(i * 7919 + 13) % 40000 + 100 for i in range(a.p)]
    rows = {"bora": [], "bora --f32-activations": [], "llama.cpp": []}
    for _ in range(a.r):
        rows["bora"].append(bora_once(model, prompt, a.n, a.t, []))
        rows["bora --f32-activations"].append(bora_once(model, prompt, a.n, a.t, ["--f32-activations"]))
        rows["llama.cpp"].append(llama_once(llm, prompt, a.n))
    base_pp = statistics.median(r[0] for r in rows["llama.cpp"])
    base_tg = statistics.median(r[1] for r in rows["llama.cpp"])
    print(f"SmolLM2-135M-Instruct Q4_1, {a.t} threads, pp{a.p} / tg{a.n}, median of {a.r} alternating rounds")
    print(f"| engine | pp{a.p} tok/s | tg{a.n} tok/s | pp vs llama.cpp | tg vs llama.cpp |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        pp = statistics.median(x[0] for x in r)
        tg = statistics.median(x[1] for x in r)
        print(f"| {name} | {pp:.1f} | {tg:.1f} | {pp / base_pp:.2f}× | {tg / base_tg:.2f}× |")


if __name__ == "__main__":
    main()
