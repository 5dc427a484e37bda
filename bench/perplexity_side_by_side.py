"""`bora perplexity` vs llama.cpp's `llama-perplexity` on the same GGUF and text, same threads,
run alternately, medians of R rounds of wall time (load included: both mmap the file).
Prints both perplexities too: they must agree within 1 %.

    python bench/perplexity_side_by_side.py [--model M.gguf] [--text T] [-c 512] [--chunks N] [-t 2] [-r 3]

llama-perplexity: built from llama-cpp-python's vendored llama.cpp (tools/oracle/README.md),
path in LLAMA_PERPLEXITY (default /work/llama-build/bin/llama-perplexity); run with
--no-repack (AMX repacking crashes it on this machine). Default model: the demo model;
default text: tests/fixtures/text/botchan_ch1.txt.
"""
import argparse
import os
import re
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA = os.environ.get("LLAMA_PERPLEXITY", "/work/llama-build/bin/llama-perplexity")


def timed(cmd, env=None):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{(r.stdout + r.stderr)[-2000:]}")
    m = re.search(r"Final estimate: PPL = ([\d.]+)", r.stdout + r.stderr)
    return dt, float(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--text", default=str(ROOT / "tests/fixtures/text/botchan_ch1.txt"))
    ap.add_argument("-c", type=int, default=512)
    ap.add_argument("--chunks", type=int)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-r", type=int, default=3)
    a = ap.parse_args()
    model = a.model or subprocess.run([str(ROOT / "tools/fetch-demo-model.sh")], capture_output=True,
                                      text=True, check=True).stdout.strip()
    chunks = ["--chunks", str(a.chunks)] if a.chunks else []
    bora = [str(ROOT / "target/release/bora"), "perplexity", model, "-f", a.text, "--ctx", str(a.c),
            "-t", str(a.t), "-q"] + chunks
    llama = [LLAMA, "-m", model, "-f", a.text, "-c", str(a.c), "-t", str(a.t), "-nr"] + chunks
    env = dict(os.environ, LD_LIBRARY_PATH=str(Path(LLAMA).parent))
    tb, tl = [], []
    for _ in range(a.r):
        dt, pb = timed(bora)
        tb.append(dt)
        dt, pl = timed(llama, env)
        tl.append(dt)
    mb, ml = statistics.median(tb), statistics.median(tl)
    print(f"model {Path(model).name}, ctx {a.c}, threads {a.t}, {a.r} rounds")
    print(f"| engine | PPL | wall s (median) | runs |")
    print(f"|---|---:|---:|---|")
    print(f"| bora | {pb:.4f} | {mb:.2f} | {' '.join(f'{x:.2f}' for x in tb)} |")
    print(f"| llama.cpp | {pl:.4f} | {ml:.2f} | {' '.join(f'{x:.2f}' for x in tl)} |")
    print(f"bora / llama.cpp speed: {ml / mb:.2f}x; PPL differs by {100 * abs(pb - pl) / pl:.2f} %")


if __name__ == "__main__":
    main()
