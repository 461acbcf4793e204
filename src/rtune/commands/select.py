"""Choose the candidates to train on from the student's scores. ``selective`` is the rule of
Selective Reflection-Tuning (IFD of the reflected instruction, then r-IFD of the reflected
answer, each kept candidate with IFD < 1 and r-IFD < 1); ``cherry`` keeps the top fraction by
IFD among IFD < 1; ``all`` and ``stage`` need no scores. Every source record gets a decision
and its reason (stored in the run as namespace ``selection``)."""

from __future__ import annotations

import argparse
import sys

from ..io import OUTPUT_FORMATS
from ._common import print_json

HELP = "keep the best candidate per record by IFD / r-IFD (selective, cherry, all, stage)"


EXAMPLES = """\
examples:
  rtune select runs/alpaca --policy selective -o selected.json --format alpaca   # the V2 rule
  rtune select scored.jsonl --policy cherry --top 0.1 -o cherry.json    # top 10% by IFD < 1
  rtune select runs/alpaca --policy stage --kind both -o both.jsonl     # V1: every 'both'
"""

def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..select import POLICIES

    p.add_argument("source", help="a scored run directory, or a scored JSONL/JSON file")
    p.add_argument("--policy", default="selective", choices=POLICIES,
                   help="selective: the paper's four-case rule; cherry: top fraction by IFD; "
                   "all: every candidate; stage: one kind (--kind)")
    p.add_argument("-o", "--output", default=None, help="write the kept candidates here")
    p.add_argument("--format", default="jsonl", choices=OUTPUT_FORMATS,
                   help="jsonl keeps provenance, scores and the decision; alpaca for training")
    p.add_argument("--top", type=float, default=0.05,
                   help="cherry: fraction of records to keep (a count when >= 1)")
    p.add_argument("--ifd-max", type=float, default=1.0,
                   help="a kept candidate needs IFD below this")
    p.add_argument("--rifd-max", type=float, default=1.0,
                   help="selective: a kept candidate needs r-IFD below this")
    p.add_argument("--metric", default="ppl", choices=("ppl", "loss"),
                   help="ratios of perplexities (ifd_ppl, the authors' choice) or of losses")
    p.add_argument("--kind", default="both", help="stage: the candidate kind to keep")
    p.add_argument("--kinds", default=None,
                   help="cherry/all: comma-separated kinds to consider (cherry default: orig)")
    p.add_argument("--json", action="store_true", help="print counts as JSON")


def run(args: argparse.Namespace) -> int:
    from ..select import CASES, select, write_selection

    kinds = tuple(args.kinds.split(",")) if args.kinds else None
    sel = select(args.source, args.policy, top=args.top, ifd_max=args.ifd_max,
                 rifd_max=args.rifd_max, metric=args.metric, kind=args.kind, kinds=kinds)
    counts = sel.counts()
    kept = sum(c["kept"] for c in counts.values())
    written = write_selection(sel, args.output, format=args.format) if args.output else None
    if args.json:
        print_json({"policy": args.policy, "sources": len(sel.decisions), "kept": kept,
                    "cases": counts, "written": written, "output": args.output})
        return 0
    print(f"policy {args.policy}: {len(sel.decisions)} source records, {kept} kept")
    for case, c in counts.items():
        print(f"  case {case:9s} kept {c['kept']:6d}  dropped {c['dropped']:6d}  "
              f"{CASES.get(case, '')}")
    if written is not None:
        print(f"wrote {written} records to {args.output}")
    if args.policy == "selective" and set(counts) == {"missing"}:
        print("note: no source record has the scores the rule needs (orig, ins, res, both "
              "candidates): score a recycled run first, or use --policy cherry on a plain "
              "dataset", file=sys.stderr)
    return 0
