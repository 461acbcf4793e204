#!/usr/bin/env bash
# Set up, then recycle the bundled 20-record sample with the embedded SmolLM2-135M-Instruct
# (no API key, no network). A few minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/rtune recycle examples/alpaca_sample.json --oracle local --run-dir runs/quickstart \
  --stages instruction,response,both --max-tokens 192 --batch-size 8 --concurrency 16 \
  -o runs/quickstart/candidates.jsonl
.venv/bin/rtune status runs/quickstart
echo
echo "output:  runs/quickstart/candidates.jsonl   status: .venv/bin/rtune status runs/quickstart"
