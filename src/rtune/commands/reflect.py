"""Answer questions in the Reflection 70B format: reasoning in <thinking>, self-corrections in
<reflection>, the final answer in <output>.

Modes: `format` (one call with the reflection system prompt; for models trained on the format,
or any instruction-following model) and `loop` (a plain draft, then --rounds x critique +
revision with any model, every round kept). INPUT is a question, or a .json/.jsonl/.txt file
of questions (keys question / prompt / instruction(+input) / text / conversations, optional id).

  rtune reflect "A coin is put in a cup, the cup is put on the bed, then the cup is turned
      upside down. Where is the coin?" --oracle local --show-thinking
  rtune reflect questions.jsonl -o answers.jsonl --oracle https://host/v1 --model NAME
      --mode loop --rounds 2 --run-dir runs/x
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..cli_fields import add_fields, values
from ..endpoint_config import EndpointConfig, add_endpoint_arguments, endpoint_values
from ..errors import InputError
from ..io import json_items
from ..reflect import ReflectConfig
from ._common import add_guided_argument

HELP = "answer questions with <thinking>/<reflection>/<output> (format or self-reflection loop)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="a question, or a .json/.jsonl/.txt file of questions")
    p.add_argument("-o", "--output", default=None,
                   help="write one JSON line per question here (file input; default: stdout)")
    add_fields(p, ReflectConfig, only=("mode", "rounds"))
    p.add_argument("--no-early-stop", action="store_true",
                   help="loop mode: run every round even when the critique finds nothing")
    p.add_argument("--show-thinking", action="store_true",
                   help="print the thinking, reflections and loop rounds, not only the answer")
    p.add_argument("--run-dir", default=None,
                   help="run directory keeping every call and answer (resumable); default "
                   "runs/reflect-<file name> for files, none for a single question")
    add_fields(p, ReflectConfig, only=("prompts_dir",))
    p.add_argument("--example", choices=("auto", "on", "off"), default="auto",
                   help="format mode: put a worked example in the conversation (auto: local "
                   "models only)")
    add_fields(p, ReflectConfig, only=("temperature", "max_tokens"))
    add_guided_argument(p)
    add_endpoint_arguments(p)


def read_questions(path: Path) -> list[Any]:
    """Questions from a JSON list, JSON lines, or a text file (one question a line)."""
    if path.suffix.lower() == ".txt":
        text = path.read_text(encoding="utf-8-sig")
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [item for _, _, item in json_items(path)]


def answer_row(result: dict[str, Any]) -> dict[str, Any]:
    """One output line: the result, plus instruction / output (the final answer only) /
    generator, so `rtune judge` and AlpacaEval read the file as it is."""
    row = {"id": result["id"], "instruction": result["question"], "output": result["answer"],
           "generator": f"{result['model']}-reflect-{result['mode']}"}
    row.update((k, v) for k, v in result.items() if k not in ("index", *row))
    return row


def _show(result: dict[str, Any], show_thinking: bool) -> None:
    if result.get("error"):
        print(f"error: {result['error']}", file=sys.stderr)
        return
    if show_thinking:
        for step in result.get("rounds") or []:
            if step["round"] == 0:
                print(f"--- draft ---\n{step['answer'].strip()}")
                continue
            print(f"--- round {step['round']}: critique (verdict: {step['verdict']}) ---\n"
                  f"{step['critique'].strip()}")
            if "answer" in step:
                print(f"--- round {step['round']}: revision ---\n{step['answer'].strip()}")
        if not result.get("rounds"):
            print(f"--- thinking ---\n{result.get('thinking') or '(none)'}")
            for i, r in enumerate(result.get("reflections") or [], 1):
                print(f"--- reflection {i} ---\n{r}")
        print("--- output ---")
    print(result["answer"])
    if result.get("flagged"):
        print(f"(no <output> in the reply: {result.get('reason')})", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from ..reflect import reflect

    config = ReflectConfig(
        **values(ReflectConfig, args, exclude=[f.name for f in fields(EndpointConfig)]),
        **endpoint_values(args),
        with_example={"auto": None, "on": True, "off": False}[args.example],
        stop_when_correct=not args.no_early_stop)
    source = Path(args.input)
    is_file = source.is_file() or (source.suffix.lower() in (".json", ".jsonl", ".txt")
                                   and not any(c.isspace() for c in args.input))
    if is_file and not source.is_file():
        raise InputError(str(source), "file not found")
    questions = read_questions(source) if is_file else [args.input]
    run_dir = args.run_dir or (Path("runs") / f"reflect-{source.stem}" if is_file else None)
    results = reflect(questions, config, run_dir=run_dir)
    failed = sum(1 for r in results if r.get("error"))
    if not is_file:
        _show(results[0], args.show_thinking)
        return 1 if failed else 0
    lines = (json.dumps(answer_row(r), ensure_ascii=False) for r in results)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
        flagged = sum(1 for r in results if r.get("flagged"))
        print(f"{len(results) - failed} answers -> {out} ({flagged} without <output>, "
              f"{failed} failed{', rerun to retry' if failed else ''}); run: {run_dir}")
    else:
        for line in lines:
            print(line)
    return 1 if failed else 0
