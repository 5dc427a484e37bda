"""`bora serve` vs llama.cpp's `llama-server`: aggregate generated tokens/s and inter-token
latency (p50/p99) with 1, 4, 16 and 32 concurrent streaming clients, same model file, same
threads, as many parallel slots as the most streams. Both servers stay loaded; each round runs
every stream count on bora, then on llama.cpp; medians over R rounds.

    python bench/serve_streams.py [--model M.gguf] [--streams 1,4,16,32] [-n 32] [-t 2] [-r 3]

Each client sends its own prompt (20–50 tokens, different lengths), asks for -n tokens greedy
with ignore_eos, and streams them (stdlib HTTP, one thread per client). Aggregate tokens/s is
all clients' tokens over the wall time from the first request to the last token (prompt
reading included); decode-phase tokens/s counts only the tokens after every stream has its
first one, over that time; inter-token latency is the gap between a client's consecutive
tokens.

llama-server: built from llama-cpp-python's vendored llama.cpp (tools/oracle/README.md), path
in LLAMA_SERVER (default /work/llama-build/bin/llama-server); run with --no-repack (AMX
repacking crashes on this machine) and f16 KV cache (its default). Default model: the
Mistral-7B-shaped Q4_0 file bench/mistral7b.sh builds.
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA = os.environ.get("LLAMA_SERVER", "/work/llama-build/bin/llama-server")
WORDS = "the sliding window keeps keys and values for every layer while the cache rolls over".split()


def prompt(i):
    n = 20 + (i * 7) % 31
    return " ".join(WORDS[(i + j) % len(WORDS)] for j in range(n))


def wait_ready(port, proc, what):
    t0 = time.time()
    while time.time() - t0 < 600:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{what} did not become ready")


def stream_one(port, i, n, out):
    body = json.dumps({"prompt": prompt(i), "max_tokens": n, "temperature": 0, "stream": True,
                       "ignore_eos": True})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"HTTP {r.status}: {r.read()[:300]!r}")
    stamps = []
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        v = json.loads(data)
        ch = v.get("choices") or []
        if ch and ch[0].get("text"):
            stamps.append(time.perf_counter())
    out[i] = stamps


def run(port, streams, n):
    out = [None] * streams
    threads = [threading.Thread(target=stream_one, args=(port, i, n, out)) for i in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = max(s[-1] for s in out if s)
    tokens = sum(len(s) for s in out)
    gaps = [b - a for s in out for a, b in zip(s, s[1:])]
    # Decode phase: from the moment every stream has its first token to the last token.
    start = max(s[0] for s in out if s)
    late = sum(1 for s in out for x in s if x > start)
    decode = late / (end - start) if end > start else float("nan")
    return tokens / (end - t0), decode, gaps, tokens


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(Path.home() / ".cache/bora/bench/mistral-7b-shape.q4_0.gguf"))
    ap.add_argument("--streams", default="1,4,16,32")
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--only", choices=["bora", "llama"])
    ap.add_argument("--bora", default=str(ROOT / "target/release/bora"), help="the bora binary (for A/Bs of two builds)")
    a = ap.parse_args()
    counts = [int(x) for x in a.streams.split(",")]
    slots = max(counts)
    ctx_per_slot = 128 + a.n
    servers = {}
    if a.only != "llama":
        bora = [a.bora, "serve", a.model, "--port", "18431", "-t", str(a.t),
                "--parallel", str(slots), "--kv-memory-mib", str(slots * ctx_per_slot * 256 // 1024 + 256),
                "--no-prefix-caching"]
        servers["bora"] = (18431, subprocess.Popen(bora, stderr=subprocess.DEVNULL))
    if a.only != "bora":
        llama = [LLAMA, "-m", a.model, "--port", "18432", "-t", str(a.t), "-tb", str(a.t), "-np", str(slots),
                 "-c", str(slots * ctx_per_slot), "-nr", "--no-webui"]
        env = dict(os.environ, LD_LIBRARY_PATH=str(Path(LLAMA).parent))
        servers["llama.cpp"] = (18432, subprocess.Popen(llama, env=env, stdout=subprocess.DEVNULL,
                                                        stderr=subprocess.DEVNULL))
    try:
        for name, (port, proc) in servers.items():
            wait_ready(port, proc, name)
            run(port, 1, 4)  # warm-up
        res = {(name, s): [] for name in servers for s in counts}
        for _ in range(a.r):
            for s in counts:
                for name, (port, _) in servers.items():
                    rate, decode, gaps, tokens = run(port, s, a.n)
                    if tokens != s * a.n:
                        print(f"warning: {name} {s} streams: {tokens} tokens, expected {s * a.n}")
                    res[(name, s)].append((rate, pct(gaps, 0.5), pct(gaps, 0.99), decode))
        print(f"model {Path(a.model).name}, {a.n} tokens per stream, threads {a.t}, {slots} slots, "
              f"{a.r} rounds (medians)")
        print("| streams | engine | aggregate tok/s | × its 1 stream | decode-phase tok/s | × its 1 stream "
              "| ITL p50 ms | ITL p99 ms |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for s in counts:
            for name in servers:
                rows = res[(name, s)]
                med = lambda k, rows=rows: statistics.median(r[k] for r in rows)  # noqa: E731
                one = lambda k, name=name: statistics.median(r[k] for r in res[(name, counts[0])])  # noqa: E731
                print(f"| {s} | {name} | {med(0):.2f} | {med(0) / one(0):.2f} | {med(3):.2f} | "
                      f"{med(3) / one(3):.2f} | {med(1) * 1e3:.0f} | {med(2) * 1e3:.0f} |")
        if len(servers) == 2:
            print("\nbora ÷ llama.cpp, aggregate tok/s:")
            for s in counts:
                b = statistics.median(r[0] for r in res[("bora", s)])
                l = statistics.median(r[0] for r in res[("llama.cpp", s)])
                print(f"  {s} streams: {b / l:.2f}")
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
