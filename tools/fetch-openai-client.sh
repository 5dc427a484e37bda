#!/usr/bin/env bash
# Fetches the openai Python client (and its dependencies) from PyPI into ~/.cache/bora/pypi,
# once, and prints the folder to put on PYTHONPATH. The server tests drive `bora serve` with it.
set -euo pipefail
pkg="$("$(dirname "$0")/pypi-fetch.sh" openai-client "openai==3.57.0" openai)"
dirname "$pkg"
