"""Export a run's candidates (all, or some kinds) as JSONL with provenance or plain Alpaca
for training tools."""

from __future__ import annotations

import argparse

from ..io import OUTPUT_FORMATS

HELP = "write a run's candidates to a file (JSONL, Alpaca, ShareGPT, messages)"


EXAMPLES = """\
examples:
  rtune export runs/alpaca -o train.json --format alpaca --kinds both     # plain Alpaca
  rtune export runs/alpaca -o all.jsonl --only-ok                         # parsed replies only
  rtune export runs/alpaca -o chat.jsonl --format messages --kinds res    # OpenAI messages
"""

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("-o", "--output", required=True, help="file to write")
    p.add_argument("--format", default="jsonl", choices=OUTPUT_FORMATS,
                   help="jsonl: every provenance field; alpaca (JSON list) / alpaca-jsonl / "
                   "sharegpt / messages: plain training records")
    p.add_argument("--kinds", default=None,
                   help="comma-separated candidate kinds to keep (orig,ins,res,both,compress)")
    p.add_argument("--only-ok", action="store_true",
                   help="leave out candidates where a marker was missing (fallback/partial)")


def run(args: argparse.Namespace) -> int:
    from ..recycle import export

    kinds = tuple(args.kinds.split(",")) if args.kinds else None
    n = export(args.run_dir, args.output, kinds=kinds, output_format=args.format,
               only_ok=args.only_ok)
    print(f"wrote {n} records to {args.output}")
    return 0
