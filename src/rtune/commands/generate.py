"""Answer evaluation test sets with a model, for pairwise judging or AlpacaEval.

MODEL is a local model ('local' = embedded SmolLM2, a Hugging Face folder, a .gguf file;
batched greedy with the model's own chat template) or the base URL of an OpenAI-compatible
server (then --model names the served model). Test sets: Vicuna, Koala, WizardLM,
Self-Instruct, LIMA files or any JSON/JSONL with an instruction field; each is named after its
file. Answers go to -o as JSON lines (question id, test set, instruction, output, generator,
settings); a rerun continues where it stopped.

  rtune generate models/recycled-7b --test-set vicuna_test_set.jsonl -o out/recycled.vicuna.jsonl
  rtune generate https://host/v1 --model served-name --test-set koala.jsonl -o out/x.koala.jsonl
"""

from __future__ import annotations

import argparse

from ._common import add_oracle_arguments, print_json

HELP = "answer evaluation test sets with a local model or an endpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="MODEL", nargs="?", default=None,
                   help="'local', a model folder or .gguf file, or an http(s):// base URL "
                   "(same as --oracle)")
    p.add_argument("--test-set", action="append", required=True, metavar="FILE",
                   help="test-set file (repeatable): Vicuna/Koala/WizardLM/Self-Instruct/LIMA "
                   "or any JSON/JSONL with an instruction field")
    p.add_argument("-o", "--output", required=True, help="JSONL file of answers to write")
    p.add_argument("--name", default=None,
                   help="generator name recorded with the answers (default: the served model "
                   "or the model folder's name)")
    p.add_argument("--run-dir", default=None,
                   help="run directory keeping every answer (resumable); default "
                   "runs/generate-<output name>")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N questions of each test set (a quick try)")
    p.add_argument("--max-tokens", type=int, default=1024, help="answer budget in tokens")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature (0 = greedy, the default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (temperature > 0)")
    p.add_argument("--system", default=None, help="system prompt put before every question")
    p.add_argument("--output-only", action="store_true",
                   help="Reflection-70B-style models: keep only the <output> part of each "
                   "answer (the whole text when there is none; flagged)")
    p.add_argument("--alpaca-eval", default=None, metavar="FILE",
                   help="also write the answers in AlpacaEval's format (JSON list of "
                   "instruction, output, generator)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_oracle_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..generate import EndpointOptions, generate
    from ..oracle.pricing import Prices

    target = args.target or args.oracle
    options = EndpointOptions(
        api_key_env=args.api_key_env, concurrency=args.concurrency, rpm=args.rpm,
        tpm=args.tpm, max_retries=args.max_retries, timeout=args.timeout,
        context_length=args.context_length, batch_size=args.batch_size,
        prices=Prices.load(args.prices, model=args.model or target,
                           price_in=args.price_in, price_out=args.price_out))
    summary = generate(
        target, args.test_set, args.output, model=args.model, name=args.name,
        run_dir=args.run_dir, temperature=args.temperature, top_p=args.top_p,
        max_tokens=args.max_tokens, system=args.system, output_only=args.output_only,
        alpaca_eval=args.alpaca_eval, options=options, limit=args.limit,
        progress=not args.no_progress)
    if args.json:
        print_json(summary)
    else:
        failed = len(summary["failed"])
        print(f"{summary['written']}/{summary['questions']} answers -> {summary['output']} "
              f"(generator {summary['generator']}, {failed} failed"
              f"{', rerun to retry' if failed else ''}); run: {summary['run_dir']}")
    return 1 if summary["failed"] else 0
