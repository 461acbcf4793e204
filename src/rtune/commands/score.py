"""Score candidates with a student model: IFD and r-IFD from perplexities and mean losses
(Selective Reflection-Tuning). TARGET is a run directory (every candidate of the run is scored
into its store; a rerun skips finished candidates) or a dataset file (written to -o as JSONL
with the score fields). Multi-GPU: ``accelerate launch -m rtune score ...`` shards the work."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..cli_fields import add_fields, values
from ..distributed import is_main_process
from ..errors import ConfigError
from ..extras import require
from ..score_config import AUTHORS, INPUT_JOIN, REVERSE_PROMPT, ScoreConfig, template_names
from ..store import STORE_NAME
from ._common import print_json

PROMPT_SETTINGS = ("reverse_prompt", "input_join")  # their own options: a file or text, escapes
HELP = "score candidates with a student model (IFD, r-IFD)"


EXAMPLES = """\
examples:
  rtune score runs/alpaca --student /models/Llama-2-7b-hf --batch-size 16   # a recycled run
  rtune score data.json --student local -o scored.jsonl --limit 50          # a plain dataset
  accelerate launch --num_processes 8 -m rtune score runs/alpaca --student /models/Llama-2-7b-hf
  rtune score runs/alpaca --student /models/Llama-2-7b-hf --authors-compat  # the authors' r(y), join
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="a run directory, or a dataset file to score")
    p.add_argument("-o", "--output", default=None,
                   help="dataset: JSONL to write (default <name>.scored.jsonl beside it); "
                   "run: also write every candidate with its scores here")
    add_fields(p, ScoreConfig, exclude=("force", *PROMPT_SETTINGS),
               template={"choices": template_names()})
    p.add_argument("--input-format", default="auto", help="dataset format (auto-detected)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="dataset files: only the first N records (a quick try)")
    p.add_argument("--reverse-prompt", default=None, metavar="TEXT|FILE",
                   help="r(y), the prompt asking the student for the instruction behind an "
                   "answer y (r-IFD); must contain {output}; a file's text when it names one "
                   f"(default: rtune's, {_shown(REVERSE_PROMPT)})")
    p.add_argument("--input-join", default=None, metavar="TEXT",
                   help="what joins instruction and input into x, the target of r-IFD (and "
                   "the user turn of a chat template); backslash escapes \\n \\t \\\\ "
                   f"are read (default: {_shown(INPUT_JOIN)})")
    p.add_argument("--authors-compat", action="store_true",
                   help="the authors' data_analysis.py settings: their r(y) and an empty "
                   "input join (--reverse-prompt / --input-join given too take precedence)")
    add_fields(p, ScoreConfig, only=("force",))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    require("local", "rtune score")
    from ..score import score_file, score_run, write_run_scores

    config = ScoreConfig(**values(ScoreConfig, args, exclude=PROMPT_SETTINGS),
                         **prompt_settings(args))
    config.validate()
    target = Path(args.target)
    with _Bar(enabled=not args.no_progress and is_main_process()) as bar:
        if (target / STORE_NAME).is_file():
            summary = score_run(target, config, progress=bar.update)
            if args.output and summary["rank"] == 0:
                summary["output"] = args.output
                summary["written"] = write_run_scores(target, args.output)
        else:
            output = args.output or str(target.with_name(f"{target.stem}.scored.jsonl"))
            summary = score_file(target, config, output, input_format=args.input_format,
                                 limit=args.limit, progress=bar.update)
    if summary.get("rank", 0) != 0:
        return 0  # under accelerate launch / torchrun only the main process reports
    if args.json:
        print_json(summary)
        return 0
    _print_summary(summary)
    return 0


def prompt_settings(args: argparse.Namespace) -> dict[str, str]:
    """``reverse_prompt`` and ``input_join`` as the options set them (absent: the default)."""
    out = dict(AUTHORS) if args.authors_compat else {}
    if args.reverse_prompt is not None:
        path = Path(args.reverse_prompt)
        try:
            is_file = "{output}" not in args.reverse_prompt and path.is_file()
        except OSError:  # a text too long to be a file name
            is_file = False
        if is_file:
            try:
                out["reverse_prompt"] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"--reverse-prompt {path}: cannot read it: {e}") from None
        else:
            out["reverse_prompt"] = args.reverse_prompt
    if args.input_join is not None:
        out["input_join"] = _unescape(args.input_join)
    return out


def _unescape(text: str) -> str:
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m[1]], text)


def _shown(text: str) -> str:
    """A default as typed on a command line (newlines as \\n); % doubled for argparse."""
    return repr(text).replace("%", "%%")


def _print_summary(s: dict) -> None:
    rate = f", {s['records_per_s']} candidates/s" if s.get("records_per_s") else ""
    print(f"scored {s.get('scored_now', 0)} candidates now, {s.get('scored_total', '?')}/"
          f"{s.get('candidates', '?')} in all ({s.get('seconds', 0)} s{rate})")
    for kind, k in s.get("by_kind", {}).items():
        ifd = "-" if k["mean_ifd"] is None else f"{k['mean_ifd']:.3f}"
        rifd = "-" if k["mean_rifd"] is None else f"{k['mean_rifd']:.3f}"
        print(f"  {kind:8s} {k['scored']:6d} scored  mean IFD {ifd}  mean r-IFD {rifd}  "
              f"IFD<1 {k['ifd_below_1']}  truncated {k['truncated']}")
    for reason, n in sorted(s.get("undefined_reasons", {}).items(), key=lambda x: -x[1])[:10]:
        print(f"  no score ({n}): {reason}")
    if s.get("output"):
        print(f"wrote {s['output']}")


class _Bar:
    """A rich progress bar (candidates done, rate, ETA) on a terminal; nothing otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.progress = None
        self.task = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]score"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=Console(file=sys.stderr))
            self.progress.__enter__()
        return self

    def update(self, done: int, total: int) -> None:
        if self.progress is None:
            return
        if self.task is None:
            self.task = self.progress.add_task("score", total=total, rate="")
        speed = self.progress.tasks[0].speed
        rate = f"{speed:.2f} cand/s" if speed else "-- cand/s"
        self.progress.update(self.task, completed=done, total=total, rate=rate)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
