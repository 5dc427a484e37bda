#!/usr/bin/env bash
# Regenerate every oracle fixture under tests/fixtures/ (tiny/, tokenizer_v1/, smollm2/).
# PYTHON defaults to the oracle venv (see README.md). Takes ~3-4 minutes on 2 cores.
set -euo pipefail
PY=${PYTHON:-/work/oracle-venv/bin/python}
cd "$(dirname "$0")/../.."
"$PY" tools/oracle/make_tiny_models.py
"$PY" tools/oracle/make_native_fixture.py
"$PY" tools/oracle/convert_gguf.py
"$PY" tools/oracle/check_gguf_llamacpp.py
"$PY" tools/oracle/make_kquant_fixtures.py
"$PY" tools/oracle/make_tokenizer_fixtures.py
"$PY" tools/oracle/make_smollm2_reference.py
"$PY" tools/oracle/make_smollm2_exact.py
"$PY" tools/oracle/make_perplexity_reference.py
"$PY" tools/oracle/make_eval_fixtures.py
"$PY" tools/oracle/make_chat_fixtures.py
"$PY" tools/oracle/make_template_fixtures.py
"$PY" tools/oracle/make_hf_to_gguf_fixture.py
