#!/usr/bin/env bash
# bora quantize against llama.cpp's llama_model_quantize (what llama-quantize runs), alternated:
# the Mistral-7B-shaped Q8_0 file (made by bench/mistral7b_side_by_side.py) to Q4_K_M, 2 threads,
# wall time and peak RSS of each, and whether the two outputs hold the same tensor bytes.
#   bash bench/quantize_side_by_side.sh [ROUNDS]      (PYTHON: a python with llama-cpp-python and gguf)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
IN=${IN:-$HOME/.cache/bora/bench/mistral-7b-shape.q8_0.gguf}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for i in $(seq "${1:-2}"); do
  /usr/bin/time -f "round $i llama.cpp %e s, peak RSS %M KB" "$PY" -c "
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params(); p.ftype = 15; p.nthread = 2; p.allow_requantize = True
assert llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)) == 0" \
    "$IN" "$OUT/llama.gguf" 2>&1 | tail -n 1
  /usr/bin/time -f "round $i bora %e s, peak RSS %M KB" target/release/bora quantize "$IN" "$OUT/bora.gguf" \
    --type q4_k_m -q 2>&1 | tail -n 1
done
"$PY" - "$OUT/llama.gguf" "$OUT/bora.gguf" <<'PY'
import hashlib, sys, gguf
digests = [{t.name: (t.tensor_type.name, hashlib.sha256(t.data.tobytes()).hexdigest())
            for t in gguf.GGUFReader(p).tensors} for p in sys.argv[1:]]
differing = [n for n in digests[0] if digests[0][n] != digests[1].get(n)]
print(f"tensors differing: {len(differing)} of {len(digests[0])}", differing[:5])
PY
