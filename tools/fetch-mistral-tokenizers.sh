#!/usr/bin/env bash
# Fetches Mistral's tokenizer files (tokenizer.model.v1, the v2/v3/v7 SentencePiece models and
# the Tekken files) from PyPI (package mistral-common, a 6.5 MB wheel) into ~/.cache/bora/pypi,
# once, and prints the folder that holds them.
set -euo pipefail
dir="${BORA_CACHE:-${HOME:-/tmp}/.cache/bora}/pypi/mistral-common"
data="$dir/mistral_common/data"
if [ ! -f "$data/tekken_240911.json" ]; then
    echo "bora: fetching Mistral's tokenizers from PyPI (mistral-common) into $dir" >&2
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dir" "mistral-common==1.13.1" >&2
fi
if [ ! -f "$data/tekken_240911.json" ]; then
    echo "bora: mistral-common installed but $data/tekken_240911.json is missing" >&2
    exit 1
fi
echo "$data"
