"""Show a run's progress: candidates per stage and parse status, oracle failures by reason
(still standing, or repaired by a later run), fallback reasons, invalid input records, tokens
in/out and cost."""

from __future__ import annotations

import argparse

from ._common import print_json

HELP = "progress, failures, tokens and cost of a run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from ..status import run_status

    s = run_status(args.run_dir)
    if args.json:
        print_json(s)
        return 0
    total = s["input_records"]
    print(f"run {s['run_dir']}  input {s['input']}")
    print(f"oracle {s['oracle']} {s['model'] or ''}".rstrip())
    print(f"records: {s['records_seen']}/{total if total is not None else '?'} started, "
          f"{s['multi_turn_passed_through']} multi-turn passed through")
    for stage, st in s["stages"].items():
        rate = st["parse_success_rate"]
        rate_s = f"{rate:.0%}" if rate is not None else "-"
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(st["by_status"].items()))
        print(f"  {stage:12s} {st['done']:6d} done  parse ok {rate_s:>4s}  ({statuses})")
    c = s["calls"]
    print(f"oracle calls {c['calls']}, tokens in {c['tokens_in']:,}, out {c['tokens_out']:,}, "
          f"cost ${c['cost']:.4f}")
    for state, label in (("standing", "call failures still standing (a rerun retries them)"),
                         ("repaired", "call failures repaired by a later run")):
        if s["failures"][state]:
            print(f"{label}: " + ", ".join(f"{k} {v}" for k, v in
                                           sorted(s["failures"][state].items())))
    if s["fallbacks"]:
        print("fallbacks and re-asks (by reason):")
        for reason, n in list(s["fallbacks"].items())[:15]:
            print(f"  {n:6d}  {reason}")
    if s["invalid_input"]:
        print(f"invalid input records ({len(s['invalid_input'])}):")
        for e in s["invalid_input"][:20]:
            print(f"  {e['path']} line {e['line']} record {e['record']} "
                  f"field {e['field']}: {e['message']}")
    return 0
