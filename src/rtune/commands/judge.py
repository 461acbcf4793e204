"""Pairwise judging of two models' answers (the AlpaGasus / Cherry_LLM / Reflection-Tuning
protocol): the judge rates both answers 1-10, each pair is judged in both orders, and per
question side A wins, ties or loses (both orders: better in both, or better in one and equal in the other, wins). Writes results.json (W/T/L per test set
and overall, win-rate score (W-L)/N+1 with a bootstrap 95% interval, judge model, prompt
version, failure counts), questions.jsonl and a stacked bar chart wtl.png to -o.

  rtune judge out/recycled.*.jsonl --vs out/alpaca.*.jsonl --judge https://host/v1 \\
      --model gpt-4o --run-dir runs/judge-1 -o results/
  rtune judge --import-reviews cherry_logs/*_reviews_gpt4.json -o results/
"""

from __future__ import annotations

import argparse

from ..cli_fields import add_fields, values
from ..endpoint_config import ENDPOINT_FIELDS, add_endpoint_arguments, endpoint_values
from ..errors import ConfigError
from ..judge import JudgeConfig
from ._common import add_guided_argument, print_json

HELP = "pairwise judge two models' answers in both orders (W/T/L, win-rate score)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("answers", nargs="*", metavar="A_FILE",
                   help="side A's answers (rtune generate JSONL or AlpacaEval JSON), or with "
                   "--import-reviews the review files")
    p.add_argument("--vs", nargs="+", default=[], metavar="B_FILE",
                   help="side B's answers to the same questions")
    p.add_argument("--import-reviews", action="store_true",
                   help="re-score saved Cherry_LLM / AlpaGasus review files (Meta_Info + data "
                   "with review / review_reverse) instead of calling a judge")
    p.add_argument("-o", "--output", default=None, metavar="DIR",
                   help="folder for results.json, questions.jsonl and wtl.png")
    p.add_argument("--run-dir", default="runs/judge",
                   help="run directory keeping every judgment (resumable, never paid twice)")
    add_fields(p, JudgeConfig, exclude=ENDPOINT_FIELDS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the full results as JSON")
    add_guided_argument(p)
    add_endpoint_arguments(p, flag="--judge")


def run(args: argparse.Namespace) -> int:
    from ..judge import import_reviews, judge

    if not args.answers:
        raise ConfigError("give side A's answer files (or review files with --import-reviews)")
    if args.import_reviews:
        results = import_reviews(args.answers, out_dir=args.output, resamples=args.resamples)
    else:
        if not args.vs:
            raise ConfigError("give side B's answers with --vs FILE...")
        config = JudgeConfig(**values(JudgeConfig, args, exclude=ENDPOINT_FIELDS),
                             **endpoint_values(args))
        results = judge(args.answers, args.vs, config, run_dir=args.run_dir,
                        out_dir=args.output, progress=not args.no_progress)
    if args.json:
        print_json(results)
    else:
        print(format_table(results))
    errors = results["failures"].get("error", 0)
    return 1 if errors else 0


def format_table(results: dict) -> str:
    lines = [f"{results['a']} (A) vs {results['b']} (B), judge {results['judge']['model']}",
             f"{'test set':<12} {'win':>5} {'tie':>5} {'lose':>5} {'failed':>6}  "
             "score (W-L)/N+1 [95% CI]"]
    blocks = list(results["test_sets"].items()) + [("overall", results["overall"])]
    for name, b in blocks:
        score = "-" if b["score"] is None else f"{b['score']:.3f}"
        ci = f" [{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}]" if b["ci95"] else ""
        lines.append(f"{name:<12} {b['win']:>5} {b['tie']:>5} {b['loss']:>5} "
                     f"{b['failed']:>6}  {score}{ci}")
    if results.get("disagreements") is not None:
        lines.append(f"{len(results['disagreements'])} disagreements between our parse and "
                     "the stored scores (see results.json)")
    missing = results.get("missing") or {}
    if missing.get("only_a") or missing.get("only_b"):
        lines.append(f"judged the intersection only: A-only {len(missing['only_a'])}, "
                     f"B-only {len(missing['only_b'])} questions left out")
    if results["failures"]:
        lines.append("failures: " + ", ".join(f"{k} {v}" for k, v in results["failures"].items())
                     + ("; rerun to retry errors" if results["failures"].get("error") else ""))
    if results.get("files"):
        files = results["files"]
        chart = (f"chart -> {files['chart']}" if "chart" in files
                 else "no chart (pip install 'rtune[report]' for wtl.png)")
        lines.append(f"results -> {files['results']}, {chart}")
    return "\n".join(lines)
