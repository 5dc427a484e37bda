#!/usr/bin/env bash
# Fetches Mistral's tokenizer files (tokenizer.model.v1, the v2/v3/v7 SentencePiece models and
# the Tekken files) from PyPI (package mistral-common, a 6.5 MB wheel) into ~/.cache/bora/pypi,
# once, and prints the folder that holds them.
exec "$(dirname "$0")/pypi-fetch.sh" mistral-common "mistral-common==1.13.1" mistral_common/data --no-deps
