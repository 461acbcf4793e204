"""What ``rtune recycle --mode batch | export | import`` prints (the work is in
:mod:`rtune.recycle_batch` and :mod:`rtune.recycle_rounds`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..batch_import import FileReport
from ..recycle_config import RecycleConfig
from ..recycle_rounds import BatchOptions, ExportReport, RoundReport


def options_from_args(args: argparse.Namespace) -> BatchOptions:
    return BatchOptions(requests_dir=args.requests_dir, shards=args.shards,
                        reexport=args.reexport, wait=args.wait,
                        poll_interval=args.poll_interval, retries=args.batch_retries,
                        fallback_online=args.fallback_online)


def run_batch_mode(args: argparse.Namespace, config: RecycleConfig, run_dir: Path,
                   output: Path | str, fmt: str) -> int:
    from .recycle import mode_from_args

    options = options_from_args(args)
    files = mode_from_args(args)[1]
    if config.mode == "batch":
        from ..recycle_batch import recycle_batch

        s: Any = recycle_batch(args.input, run_dir, config, options, output=output,
                               output_format=fmt, force_new=args.force_new)
        rounds = s.rounds
    elif config.mode == "export":
        from ..recycle_rounds import export_round

        s = export_round(args.input, run_dir, config, options, output=output,
                         output_format=fmt, force_new=args.force_new)
        rounds = [s.round]
    else:
        from ..recycle_rounds import import_round

        s = import_round(args.input, run_dir, config, files, options, output=output,
                         output_format=fmt)
        rounds = [s.round]
    bad = _print_imports(s.imports)
    print(f"run: {s.run_dir}   (rtune status {s.run_dir})")
    for r in rounds:
        _print_round(r)
    if config.mode == "batch":
        _print_batch(s)
    elif s.export is not None:
        _print_export(s.export, args)
    _print_totals(s.totals, s.output)
    failures = rounds[-1].failures if rounds else {}
    if failures:
        print(f"failed: {sum(failures.values())} stage call(s), by reason: " +
              ", ".join(f"{k} {v}" for k, v in sorted(failures.items())) +
              " (rtune status lists them; --fallback-online runs them online)")
    return 1 if failures or bad else 0


def _print_imports(reports: list[FileReport]) -> int:
    """Each file's counts and problem lines; the number of refused or unreadable lines."""
    bad = 0
    for r in reports:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items()))
        print(f"imported {r.path}: {r.imported} result(s), {r.already} already in the "
              f"store" + (f", error lines: {errors}" if errors else "") +
              (f", {r.refused} refused" if r.refused else "") +
              (f", {r.bad} unreadable" if r.bad else "") +
              (f", ${r.cost:.4f} at batch prices" if r.cost else ""))
        for line in r.lines_of_problems():
            print(f"  {line}")
        bad += r.refused + r.bad
    return bad


def _print_round(r: RoundReport) -> None:
    head = f"round {r.round}: {r.new} new request(s)" if r.new else "no new requests"
    print(f"{head}, {r.deferred} waiting for a result" +
          (f", {r.online} run online" if r.online else ""))


def _print_export(e: ExportReport, args: argparse.Namespace) -> None:
    if e.round is None:
        print("nothing new to export" + (
            f": {e.still_out} request(s) of earlier rounds still wait for their results "
            "(import them, or --mode export --reexport writes them again)"
            if e.still_out else ": every request has its result"))
        return
    print(f"{e.round}: {e.lines} request(s) in {len(e.files)} file(s) in {e.folder}/")
    for path, lines in e.files[:8]:
        print(f"  {path}  ({lines} lines)")
    if len(e.files) > 8:
        print(f"  ... and {len(e.files) - 8} more")
    if e.still_out:
        print(f"  ({e.still_out} request(s) of earlier rounds still wait for their results)")
    print("run each file with e.g. `python -m vllm.entrypoints.openai.run_batch -i FILE "
          f"-o RESULT --model {args.model}`, then: rtune recycle {args.input} --run-dir "
          f"{args.run_dir or '...'} --model {args.model} --mode import RESULT...")


def _print_batch(s: Any) -> None:
    for line in s.notes:
        print(line)
    if s.submitted:
        print(f"submitted {len(s.submitted)} batch(es): {', '.join(s.submitted)}")
    if s.collected:
        print(f"collected {len(s.collected)} batch(es): {', '.join(s.collected)}")
    if s.done:
        print("every round is done" + (f"; {s.failed} request(s) failed (rtune status)"
                                       if s.failed else ""))
    else:
        print(f"{s.active} batch(es) running, {s.pending} request(s) not yet submitted: run "
              "the same command later to collect them and submit the next round (or --wait)")


def _print_totals(t: dict[str, Any], output: str | None) -> None:
    if output:
        print(f"candidates: {output}")
    for kind, by_status in t.get("candidates", {}).items():
        print(f"  {kind:5s} " + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())))
    c = t.get("calls")
    if c:
        print(f"oracle: {c['calls']} calls, {c['tokens_in']:,} tokens in, "
              f"{c['tokens_out']:,} out, ${c['cost']:.4f}")
