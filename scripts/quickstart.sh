#!/usr/bin/env bash
# Set up, then run the pipeline on the first 8 records of the bundled sample with the embedded
# SmolLM2-135M-Instruct (no API key, no network): recycle -> score -> select -> report.
# About 5-10 minutes on 2 CPU cores (the first load converts the model once, ~30 s).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN=runs/quickstart
.venv/bin/rtune recycle examples/alpaca_sample.json --oracle local --run-dir "$RUN" --limit 8 \
  --stages instruction,response,both --max-tokens 160 --batch-size 8 --concurrency 16 \
  -o "$RUN/candidates.jsonl"
.venv/bin/rtune score "$RUN" --no-progress                 # IFD / r-IFD with the same model
.venv/bin/rtune select "$RUN" --policy selective -o "$RUN/selected.json" --format alpaca
.venv/bin/rtune report "$RUN" -o "$RUN/report"
.venv/bin/rtune status "$RUN"
echo
echo "candidates: $RUN/candidates.jsonl   selected: $RUN/selected.json   report: $RUN/report/index.html"
