"""Run benchmarks with lm-evaluation-harness on a local model and print one summary table.

Needs the extra: pip install 'rtune[bench]'. MODEL is 'local' (the embedded SmolLM2), a Hugging
Face model folder or a .gguf file. Offline: real tasks need their datasets in the Hugging Face
cache; custom tasks (YAML + local JSON/JSONL) come from --include-path.

  rtune bench models/recycled-7b --tasks mmlu,gsm8k,arc_challenge,hellaswag,truthfulqa_mc2,ifeval
  rtune bench models/reflect-8b --tasks gsm8k --output-only -o results/bench.md
  rtune bench local --tasks my_task --include-path my_tasks/ --limit 50
"""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..extras import require
from ._common import print_json

HELP = "run lm-evaluation-harness tasks on a local model (summary table)"


def _limit(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return int(value) if value >= 1 and value.is_integer() else value


def _batch(text: str) -> int | str:
    if text == "auto" or text.startswith("auto:"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="'local' (embedded SmolLM2), a Hugging Face model folder or a .gguf file")
    p.add_argument("--tasks", required=True,
                   help="comma-separated lm-eval task or group names, e.g. "
                   "mmlu,gsm8k,arc_challenge,hellaswag,truthfulqa_mc2,ifeval")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="folder of custom lm-eval task YAML files (repeatable)")
    p.add_argument("--limit", type=_limit, default=None,
                   help="at most this many examples per task (a fraction if below 1); for "
                   "quick checks, not for reported numbers")
    p.add_argument("--batch-size", type=_batch, default=8,
                   help="batch size, or 'auto' to let lm-eval find the largest that fits")
    p.add_argument("--device", default="auto",
                   help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--dtype", default=None,
                   help="model dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--num-fewshot", type=int, default=None,
                   help="few-shot examples per question (default: each task's own)")
    p.add_argument("--apply-chat-template", action="store_true",
                   help="wrap prompts in the model's saved chat template (instruction-tuned "
                   "models)")
    p.add_argument("--gen-kwargs", default=None, metavar="K=V,...",
                   help="generation settings for generate-until tasks, e.g. max_gen_toks=1024. "
                   "Reflection-style models think before answering: give them room and stop "
                   "them after the answer, e.g. max_gen_toks=2048,until=</output> (a task's "
                   "own stop strings such as a blank line would cut them inside <thinking>)")
    p.add_argument("--output-only", action="store_true",
                   help="Reflection-style models: score only the <output> part of each "
                   "generation (whole text when there is none, counted); generate-until "
                   "tasks only")
    p.add_argument("--bootstrap-iters", type=int, default=100000,
                   help="bootstrap resamples for the stderr of non-mean metrics (0 = none)")
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="write the summary: FILE.md as a markdown table, else JSON")
    p.add_argument("--log-samples", action="store_true",
                   help="keep every scored sample (prompt, generation, filtered answer) in "
                   "the JSON summary")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    require("bench", "rtune bench")
    require("local", "rtune bench")
    from ..bench import bench, format_markdown

    if args.log_samples and args.output and args.output.lower().endswith((".md", ".markdown")):
        raise ConfigError("--log-samples needs a JSON -o file (the samples do not fit a table)")
    summary = bench(
        args.model, args.tasks, include_path=args.include_path, limit=args.limit,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype,
        num_fewshot=args.num_fewshot, apply_chat_template=args.apply_chat_template,
        gen_kwargs=args.gen_kwargs, output_only=args.output_only,
        bootstrap_iters=args.bootstrap_iters, output=args.output,
        log_samples=args.log_samples, quiet=not getattr(args, "verbose", False))
    if not summary:  # a non-zero rank of a distributed run
        return 0
    if args.json:
        print_json(summary)
    else:
        print(format_markdown(summary), end="")
        if args.output:
            print(f"summary -> {args.output}")
    return 0
