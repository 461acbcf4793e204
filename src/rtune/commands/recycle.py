"""Recycle an instruction-tuning dataset with an oracle LLM (Reflection-Tuning).

Reads Alpaca JSON/JSONL, ShareGPT, OpenAI messages, parquet or a Hugging Face save_to_disk
folder. Each source record gets candidates: orig, ins (instruction reflection), res (response
reflection), both (response reflection of ins), optionally compress first. All work is kept in
RUN_DIR/rtune.sqlite: interrupt at any time and run the same command again to continue. One
process at a time writes a run folder, and a folder holding another input's run (or one made
with other settings) is refused: use another --run-dir, or --force-new to start it afresh.

Modes (--mode): online (default) calls the oracle as it goes. batch sends the requests to
the OpenAI Batch API (half the price): the command submits and exits, and the same command
later collects the finished batches and submits the next round (stage both and re-asks depend
on round 1); --wait polls until done. export writes the pending requests as sharded JSONL
files in the OpenAI batch format, for vLLM's batch runner or any engine that reads it; import
brings their result files back (--mode import FILE...) and writes the next round's requests.

  rtune recycle data.json --oracle https://api.openai.com/v1 --model gpt-4o-mini --mode batch
  rtune recycle data.json --model Qwen/Qwen2.5-7B-Instruct --mode export --shards 16
  rtune recycle data.json --model Qwen/Qwen2.5-7B-Instruct --mode import out/*.jsonl

Exit status: 0 all done (or batches submitted and running); 1 some oracle calls failed (a rerun
retries them), some result lines were refused or unreadable, or the run stopped because the
endpoint refused the key or nothing listens at its address; 2 bad input or options.
"""

from __future__ import annotations

import argparse

from ..cli_fields import add_fields, values
from ..endpoint_config import ENDPOINT_FIELDS, add_endpoint_arguments, endpoint_values
from ..io import OUTPUT_FORMATS, input_output_format
from ..recycle_config import DEFAULT_STAGES, MODES, STAGES, RecycleConfig
from ._common import add_guided_argument, print_json

HELP = "reflect on every record with an oracle LLM and write the candidates"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="dataset file or folder")
    p.add_argument("-o", "--output", default=None,
                   help="write every candidate here when done (default RUN_DIR/candidates.jsonl)")
    p.add_argument("--run-dir", default=None,
                   help="run directory holding the store (default runs/<input name>)")
    p.add_argument("--format", default="jsonl", choices=(*OUTPUT_FORMATS, "input"),
                   help="output format: jsonl keeps full provenance; 'input' = the input's")
    p.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                   help=f"comma-separated, from: {', '.join(STAGES)}")
    p.add_argument("--example", choices=("auto", "on", "off"), default="auto",
                   help="put a worked example in the conversation (auto: local oracles only)")
    add_fields(p, RecycleConfig, exclude=ENDPOINT_FIELDS)
    p.add_argument("--force-new", action="store_true",
                   help="start the run folder afresh: delete its store (candidates and paid "
                   "calls) first. Without it a folder holding another input's run, or one made "
                   "with other settings, is refused")
    p.add_argument("--dry-run", action="store_true",
                   help="print calls, estimated tokens and cost; call nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    add_guided_argument(p)
    add_endpoint_arguments(p, replicas=True)
    add_batch_arguments(p)


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("batch modes")
    g.add_argument("--mode", nargs="+", default=["online"], metavar=("MODE", "RESULT"),
                   help=f"{' | '.join(MODES)} (default online); import takes the result "
                   "files after it (--mode import out/*.jsonl)")
    g.add_argument("--requests-dir", default=None, metavar="DIR",
                   help="export (and the round after an import): write request files in "
                   "DIR/round-N/ (default: the last export's)")
    g.add_argument("--shards", type=int, default=1,
                   help="export: files per round at least (more where one would pass "
                   "50,000 lines or 200 MB)")
    g.add_argument("--reexport", action="store_true",
                   help="export again the requests whose results never came back")
    g.add_argument("--wait", action="store_true",
                   help="batch: poll until every round is done (else submit and exit)")
    g.add_argument("--poll-interval", type=float, default=30.0,
                   help="batch: seconds between polls with --wait")
    g.add_argument("--batch-retries", type=int, default=2,
                   help="times a request whose batch line failed for a passing reason "
                   "(expired, server error, lost) goes out again")
    g.add_argument("--fallback-online", action="store_true",
                   help="batch: run failed and expired lines online at once instead")


def mode_from_args(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The mode and the result files that follow ``--mode import``."""
    from ..errors import ConfigError

    mode, files = args.mode[0], args.mode[1:]
    if files and mode != "import":
        raise ConfigError(f"--mode {mode} takes no files (got {' '.join(files)}); only "
                          "--mode import FILE... does, and the dataset goes before --mode")
    if mode == "import" and not files:
        raise ConfigError("--mode import needs the result files: --mode import out/*.jsonl")
    return mode, files


def config_from_args(args: argparse.Namespace) -> RecycleConfig:
    return RecycleConfig(
        **values(RecycleConfig, args, exclude=(*ENDPOINT_FIELDS, "stages", "mode")),
        **endpoint_values(args), stages=tuple(args.stages.split(",")),
        mode=mode_from_args(args)[0],
        with_example={"auto": None, "on": True, "off": False}[args.example],
        progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..recycle import recycle

    config = config_from_args(args)
    run_dir = Path(args.run_dir or Path("runs") / Path(args.input).stem)
    if args.dry_run:
        from ..estimate import estimate

        print_json(estimate(args.input, config, run_dir))
        return 0
    fmt = input_output_format(args.input) if args.format == "input" else args.format
    output = args.output or run_dir / "candidates.jsonl"
    if config.mode != "online":
        from ._recycle_batch import run_batch_mode

        return run_batch_mode(args, config, run_dir, output, fmt)
    summary = recycle(args.input, run_dir, config, output=output, output_format=fmt,
                      force_new=args.force_new)
    print(f"run: {summary.run_dir}   (rtune status {summary.run_dir})")
    print(f"candidates: {summary.output}")
    for kind, by_status in summary.candidates.items():
        print(f"  {kind:5s} " + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())))
    calls = summary.calls
    print(f"oracle: {calls['calls']} calls, {calls['tokens_in']:,} tokens in, "
          f"{calls['tokens_out']:,} out, ${calls['cost']:.4f}")
    if summary.invalid:
        print(f"invalid input records skipped: {summary.invalid} (see rtune status)")
    if summary.failures:
        print(f"failed: {sum(summary.failures.values())} oracle call(s), by reason: " +
              ", ".join(f"{k} {v}" for k, v in sorted(summary.failures.items())) +
              "; rerun the same command to retry them")
        return 1
    return 0
