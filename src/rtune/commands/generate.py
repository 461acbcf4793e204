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

from ..cli_fields import add_fields, values
from ..endpoint_config import ENDPOINT_FIELDS, add_endpoint_arguments, endpoint_values
from ..generate import GenerateConfig
from ._common import print_json

HELP = "answer evaluation test sets with a local model or an endpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="MODEL", nargs="?", default=None,
                   help="the model that answers: 'local' (the default), 'local:/path', a model "
                   "folder or .gguf file, or an http(s):// base URL (then --model names the "
                   "served model)")
    p.add_argument("--test-set", action="append", required=True, metavar="FILE",
                   help="test-set file (repeatable): Vicuna/Koala/WizardLM/Self-Instruct/LIMA "
                   "or any JSON/JSONL with an instruction field")
    p.add_argument("-o", "--output", required=True, help="JSONL file of answers to write")
    p.add_argument("--run-dir", default=None,
                   help="run directory keeping every answer (resumable); default "
                   "runs/generate-<output name>")
    add_fields(p, GenerateConfig, exclude=ENDPOINT_FIELDS)
    p.add_argument("--alpaca-eval", default=None, metavar="FILE",
                   help="also write the answers in AlpacaEval's format (JSON list of "
                   "instruction, output, generator)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_endpoint_arguments(p, flag=None, aliases=("--oracle",),
                           exclude=("loop_guard",))  # answers are never guided


def run(args: argparse.Namespace) -> int:
    from ..generate import generate

    config = GenerateConfig(**values(GenerateConfig, args, exclude=ENDPOINT_FIELDS),
                            **{**endpoint_values(args), "spec": args.target or getattr(args, "spec", None)
                                 or "local"})
    summary = generate(config, args.test_set, args.output, run_dir=args.run_dir,
                       alpaca_eval=args.alpaca_eval, progress=not args.no_progress)
    if args.json:
        print_json(summary)
    else:
        failed = len(summary["failed"])
        print(f"{summary['written']}/{summary['questions']} answers -> {summary['output']} "
              f"(generator {summary['generator']}, {failed} failed"
              f"{', rerun to retry' if failed else ''}); run: {summary['run_dir']}")
    return 1 if summary["failed"] else 0
