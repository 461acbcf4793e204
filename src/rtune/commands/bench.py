"""Run benchmarks with lm-evaluation-harness on a local model and print one summary table.

Needs the extra: pip install 'rtune[bench]'. MODEL is 'local' (the embedded SmolLM2), a Hugging
Face model folder or a .gguf file. Offline: real tasks need their datasets in the Hugging Face
cache; custom tasks (YAML + local JSON/JSONL) come from --include-path.

  rtune bench models/recycled-7b --tasks mmlu,gsm8k,arc_challenge,hellaswag,truthfulqa_mc2,ifeval
  rtune bench models/reflect-8b --tasks gsm8k --output-only -o results/bench.md
  rtune bench local --tasks my_task --include-path my_tasks/ --limit 50
"""

from __future__ import annotations

import argparse

from ..bench import BenchConfig
from ..cli_fields import add_fields, values
from ..errors import ConfigError
from ..extras import require
from ._common import print_json

HELP = "run lm-evaluation-harness tasks on a local model (summary table)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="'local' (embedded SmolLM2), a Hugging Face model folder or a .gguf file")
    add_fields(p, BenchConfig, tasks={"required": True},
               include_path={"action": "append", "default": []})
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="write the summary: FILE.md as a markdown table, else JSON")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    require("bench", "rtune bench")
    require("local", "rtune bench")
    from ..bench import bench, format_markdown

    if args.log_samples and args.output and args.output.lower().endswith((".md", ".markdown")):
        raise ConfigError("--log-samples needs a JSON -o file (the samples do not fit a table)")
    config = BenchConfig(**values(BenchConfig, args),
                         quiet=not getattr(args, "verbose", False))
    summary = bench(args.model, config, output=args.output)
    if not summary:  # a non-zero rank of a distributed run
        return 0
    if args.json:
        print_json(summary)
    else:
        print(format_markdown(summary), end="")
        if args.output:
            print(f"summary -> {args.output}")
    return 0
