#!/usr/bin/env bash
# bora quantize against llama.cpp's llama_model_quantize (what llama-quantize runs), alternated:
# the Mistral-7B-shaped Q8_0 file (made by bench/mistral7b_side_by_side.py) to TYPE (default
# q4_k_m), 2 threads, wall time and peak RSS of each, and whether the two outputs hold the same
# tensor bytes.
#   [TYPE=q3_k_m] bash bench/quantize_side_by_side.sh [ROUNDS]
#   (PYTHON: a python with llama-cpp-python and gguf)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
IN=${IN:-$HOME/.cache/bora/bench/mistral-7b-shape.q8_0.gguf}
TYPE=${TYPE:-q4_k_m}
# llama.cpp's llama_ftype numbers.
declare -A FTYPES=([q4_0]=2 [q4_1]=3 [q8_0]=7 [q5_0]=8 [q5_1]=9 [q2_k]=10 [q3_k_s]=11
  [q3_k_m]=12 [q3_k_l]=13 [q4_k_s]=14 [q4_k_m]=15 [q5_k_s]=16 [q5_k_m]=17 [q6_k]=18)
FTYPE=${FTYPES[$TYPE]:?"TYPE must be one of ${!FTYPES[*]}"}
echo "$TYPE (llama_ftype $FTYPE) from $IN"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for i in $(seq "${1:-2}"); do
  /usr/bin/time -f "round $i llama.cpp %e s, peak RSS %M KB" "$PY" -c "
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params(); p.ftype = $FTYPE; p.nthread = 2; p.allow_requantize = True
assert llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)) == 0" \
    "$IN" "$OUT/llama.gguf" 2>&1 | tail -n 1
  /usr/bin/time -f "round $i bora %e s, peak RSS %M KB" target/release/bora quantize "$IN" "$OUT/bora.gguf" \
    --type "$TYPE" -q 2>&1 | tail -n 1
done
"$PY" - "$OUT/llama.gguf" "$OUT/bora.gguf" <<'PY'
import hashlib, sys, gguf
digests = [{t.name: (t.tensor_type.name, hashlib.sha256(t.data.tobytes()).hexdigest())
            for t in gguf.GGUFReader(p).tensors} for p in sys.argv[1:]]
differing = [n for n in digests[0] if digests[0][n] != digests[1].get(n)]
print(f"tensors differing: {len(differing)} of {len(digests[0])}", differing[:5])
PY
