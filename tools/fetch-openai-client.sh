#!/usr/bin/env bash
# Fetches the openai Python client (and its dependencies) from PyPI into ~/.cache/bora/pypi,
# once, and prints the folder to put on PYTHONPATH. The server tests drive `bora serve` with it.
set -euo pipefail
dir="${BORA_CACHE:-${HOME:-/tmp}/.cache/bora}/pypi/openai-client"
if [ ! -d "$dir/openai" ]; then
    echo "bora: fetching the openai Python client from PyPI into $dir" >&2
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$dir" "openai==3.57.0" >&2
fi
if [ ! -d "$dir/openai" ]; then
    echo "bora: openai was installed but $dir/openai is missing" >&2
    exit 1
fi
echo "$dir"
