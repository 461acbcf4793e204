"""Recycle an instruction-tuning dataset with an oracle LLM (Reflection-Tuning).

Reads Alpaca JSON/JSONL, ShareGPT, OpenAI messages, parquet or a Hugging Face save_to_disk
folder. Each source record gets candidates: orig, ins (instruction reflection), res (response
reflection), both (response reflection of ins), optionally compress first. All work is kept in
RUN_DIR/rtune.sqlite: interrupt at any time and run the same command again to continue. One
process at a time writes a run folder, and a folder holding another input's run (or one made
with other settings) is refused: use another --run-dir, or --force-new to start it afresh.

Exit status: 0 all done; 1 some oracle calls failed (a rerun retries them), or the run stopped
because the endpoint refused the key or nothing listens at its address; 2 bad input or options.
"""

from __future__ import annotations

import argparse

from ..io import OUTPUT_FORMATS, input_output_format
from ..recycle_config import DEFAULT_STAGES, STAGES, RecycleConfig
from ._common import add_oracle_arguments, print_json

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
    p.add_argument("--prompts", default=None, metavar="DIR",
                   help="folder of prompt YAML files overriding the packaged ones by name")
    p.add_argument("--example", choices=("auto", "on", "off"), default="auto",
                   help="put a worked example in the conversation (auto: local oracles only)")
    p.add_argument("--reask", type=int, default=1,
                   help="times to re-ask when a reply misses a marker before falling back")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="oracle sampling temperature (0 = greedy, the default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (temperature > 0)")
    p.add_argument("--max-tokens", type=int, default=2048,
                   help="reply budget per call (bounded by the context left)")
    p.add_argument("--limit", type=int, default=None, help="only the first N records")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip bad records (listed in `rtune status`) instead of stopping")
    p.add_argument("--force-new", action="store_true",
                   help="start the run folder afresh: delete its store (candidates and paid "
                   "calls) first. Without it a folder holding another input's run, or one made "
                   "with other settings, is refused")
    p.add_argument("--dry-run", action="store_true",
                   help="print calls, estimated tokens and cost; call nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    add_oracle_arguments(p)


def config_from_args(args: argparse.Namespace) -> RecycleConfig:
    return RecycleConfig(
        stages=tuple(args.stages.split(",")), oracle=args.oracle, model=args.model,
        api_key_env=args.api_key_env, prompts_dir=args.prompts,
        with_example={"auto": None, "on": True, "off": False}[args.example], reask=args.reask,
        temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
        context_length=args.context_length, concurrency=args.concurrency, rpm=args.rpm,
        tpm=args.tpm, timeout=args.timeout, max_retries=args.max_retries,
        batch_size=args.batch_size, prices_file=args.prices, price_in=args.price_in,
        price_out=args.price_out, skip_invalid=args.skip_invalid, limit=args.limit,
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
