"""Write a report for runs or datasets: OUT/index.html (one self-contained page: summary,
figures, a side-by-side record browser with word diffs, filters, search and paging),
OUT/stats.json and OUT/figures/*.png. Works on partial runs and on plain dataset files;
several inputs are compared."""

from __future__ import annotations

import argparse

from ..extras import require
from ..report import ALIGN_MODES, DEFAULT_INLINE_LIMIT_MB, build_report
from .stats import add_common

HELP = "write an HTML report (statistics, figures, record browser)"


EXAMPLES = """\
examples:
  rtune report runs/alpaca -o runs/alpaca/report             # one run: stats, figures, records
  rtune report alpaca.json recycled.json -o compare/         # two datasets side by side
  rtune report runs/a runs/b --title "oracle A vs B" --no-coherence
"""

def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("-o", "--output", default="report", metavar="DIR",
                   help="output folder")
    p.add_argument("--title", default=None, help="page title")
    p.add_argument("--align", default="auto", choices=ALIGN_MODES,
                   help="pair records of several datasets in the browser by id, identical "
                   "output text or position (auto: id, else output when most match)")
    p.add_argument("--inline-limit-mb", type=float, default=DEFAULT_INLINE_LIMIT_MB,
                   help="record text above this size goes to OUT/data/chunk-N.js files "
                   "loaded on demand instead of inside index.html")


def run(args: argparse.Namespace) -> int:
    require("report", "rtune report")
    res = build_report(args.inputs, args.output, tokenizer=args.tokenizer,
                       coherence=not args.no_coherence, coherence_sample=args.coherence_sample,
                       inline_limit_mb=args.inline_limit_mb, title=args.title,
                       align=args.align)
    for note in res.stats.to_dict()["notes"]:
        print(f"note: {note}")
    extra = f" + {res.chunk_files} data chunk files" if res.chunk_files else ""
    print(f"wrote {res.index} ({res.records} records{extra}), {res.stats_json}, "
          f"{len(res.figures)} figures in {res.out_dir / 'figures'}")
    return 0
