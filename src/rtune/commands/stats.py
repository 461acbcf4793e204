"""Print the statistics of runs or datasets: lengths, coherence, IFD / r-IFD, perplexities,
oracle usage, parse fallbacks and selection counts."""

from __future__ import annotations

import argparse
import json

from ..stats import DEFAULT_COHERENCE_SAMPLE, gather

HELP = "print dataset / run statistics as a table"


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="run directories (with rtune.sqlite) and/or dataset files")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer folder for lengths (default: the embedded model's; "
                   "whitespace words if none loads)")
    p.add_argument("--no-coherence", action="store_true",
                   help="skip instruction-response coherence (all-MiniLM-L6-v2 embeddings)")
    p.add_argument("--coherence-sample", type=int, default=DEFAULT_COHERENCE_SAMPLE,
                   help="embed at most this many records per group (0 = all)")


EXAMPLES = """\
examples:
  rtune stats runs/alpaca                       # lengths, coherence, IFD / r-IFD, cost
  rtune stats alpaca.json recycled.json --json  # two datasets, machine-readable
  rtune stats runs/alpaca --tokenizer /models/Llama-2-7b-hf --no-coherence
"""

def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")


def run(args: argparse.Namespace) -> int:
    stats = gather(args.inputs, tokenizer=args.tokenizer, coherence=not args.no_coherence,
                   coherence_sample=args.coherence_sample)
    d = stats.to_dict()
    if args.json:
        print(json.dumps(d, indent=2, ensure_ascii=False))
        return 0
    from rich.console import Console

    from ..stats_table import stats_renderable

    Console().print(stats_renderable(d))
    return 0
