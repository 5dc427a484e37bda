#!/usr/bin/env bash
# Fetches EleutherAI's lm-evaluation-harness with its API client parts, and transformers for
# its tokenizer (no torch: the local-completions model only talks HTTP), from PyPI into
# ~/.cache/bora/pypi, once, and prints the folder to put on PYTHONPATH. The server test that
# scores MMLU through `bora serve` runs it.
set -euo pipefail
pkg="$("$(dirname "$0")/pypi-fetch.sh" lm-eval "lm_eval[api]==0.4.13" lm_eval transformers==5.24.0)"
dirname "$pkg"
