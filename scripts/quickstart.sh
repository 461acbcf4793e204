#!/usr/bin/env bash
# Set up, then run the whole experiment of recipes/quickstart.yaml with the embedded
# SmolLM2-135M-Instruct (no API key, no network): recycle -> score -> select -> train two arms
# (original vs recycled) -> answer test questions -> judge them pairwise -> report.
# Results in runs/quickstart (page: runs/quickstart/report/index.html). Running it again does
# only what is not up to date (seconds when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/rtune run recipes/quickstart.yaml "$@"
