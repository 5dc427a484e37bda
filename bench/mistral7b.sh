#!/usr/bin/env bash
# Fresh-machine entry point for bench/mistral7b_side_by_side.py: a venv with the `gguf`
# package, sentencepiece, mistral-common (the v1 tokenizer) and llama-cpp-python (builds
# llama.cpp from source: ~10 minutes on 2 cores), a release build of bora, then the run.
# BENCH_VENV reuses a venv that already has them. Arguments go to the Python script.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/bora/bench-venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q numpy gguf sentencepiece mistral-common
    CMAKE_BUILD_PARALLEL_LEVEL=2 "$VENV/bin/pip" install -q llama-cpp-python
fi
cargo build --release -q
exec "$VENV/bin/python" bench/mistral7b_side_by_side.py "$@"
