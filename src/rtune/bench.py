"""Benchmarks through lm-evaluation-harness (the ``bench`` extra): named tasks on a local model,
one summary table.

``output_only`` is for Reflection-style models: on generate-until tasks each generation is cut
to its ``<output>`` part (:func:`rtune.reflection.extract_output`) before the task's own filters
and metrics see it; a generation without one is scored whole and counted as ``flagged``.
Log-likelihood tasks (multiple choice) score fixed continuations, so the option does not apply.

rtune never downloads: real tasks (mmlu, gsm8k, ...) need their datasets in the Hugging Face
cache; custom tasks (YAML + local JSON/JSONL, ``include_path``) run offline.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .cli_fields import settings_field
from .errors import ConfigError
from .io import write_text_atomic

INSTALL_HINT = "pip install 'rtune[bench]'"


def _lm_eval() -> Any:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError as e:
        if e.name == "lm_eval":
            raise ConfigError(f"rtune bench needs lm-evaluation-harness: {INSTALL_HINT}"
                              ) from None
        raise ConfigError(f"lm-evaluation-harness is installed but does not import ({e}); "
                          f"reinstall it: {INSTALL_HINT}") from None
    return lm_eval


# ---------------------------------------------------------------- --output-only


def output_only_filter() -> Any:
    """An lm-eval filter keeping the ``<output>`` part of each generation; it counts the
    generations that had none (scored whole) in ``.flagged`` and all of them in ``.seen``."""
    from lm_eval.api.filter import Filter

    from .reflection import extract_output

    class OutputOnly(Filter):
        def __init__(self) -> None:
            self.flagged = 0
            self.seen = 0

        # FilterEnsemble builds each step by calling it (newer lm-eval) or uses it as is
        # (older): returning itself works for both and keeps the counts on one object.
        def __call__(self) -> OutputOnly:
            return self

        def apply(self, resps, docs):
            out = []
            for group in resps:
                kept = []
                for text in group:
                    answer, flagged = extract_output(text)
                    self.seen += 1
                    self.flagged += int(flagged)
                    kept.append(answer)
                out.append(kept)
            return out

    return OutputOnly()


def apply_output_only(task: Any, counters: dict[str, Any]) -> bool:
    """Put the output-only step first in every filter pipeline of a generate-until task."""
    if getattr(task, "OUTPUT_TYPE", None) != "generate_until" or getattr(
            task, "_rtune_output_only", False):
        return False
    step = counters.setdefault(_task_name(task), output_only_filter())
    for ensemble in getattr(task, "_filters", []):
        ensemble.filters = [step, *ensemble.filters]
    task._rtune_output_only = True
    return True


def _task_name(task: Any) -> str:
    return str(getattr(task, "task_name", None) or task.config.task)


def _tasks_in(obj: Any) -> list[Any]:
    """Every Task inside what a TaskManager loader returns (dicts, lists, groups)."""
    from lm_eval.api.task import Task

    if isinstance(obj, Task):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tasks_in(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tasks_in(v)]
    if hasattr(obj, "get_all_tasks"):
        return list(obj.get_all_tasks())
    return []


def _task_manager(include_path: Sequence[str] | None, names: list[str], *,
                  output_only: bool, counters: dict[str, Any]) -> Any:
    from lm_eval.tasks import TaskManager

    class Manager(TaskManager):
        """Loads tasks as usual, then (output-only) patches their filters."""

        def _patched(self, loaded: Any) -> Any:
            if output_only:
                for task in _tasks_in(loaded):
                    apply_output_only(task, counters)
            return loaded

        def load(self, *args: Any, **kwargs: Any) -> Any:
            return self._patched(super().load(*args, **kwargs))

        def load_task_or_group(self, *args: Any, **kwargs: Any) -> Any:
            return self._patched(super().load_task_or_group(*args, **kwargs))

    def unknown_error(unknown: list[str]) -> ConfigError:
        return ConfigError(
            "unknown lm-eval task(s): " + ", ".join(unknown)
            + ("" if paths else "; custom tasks need --include-path DIR (their YAML files)")
            + " (lm-eval's names: `lm-eval ls tasks`)")

    # Indexing lm-eval's ~15k built-in task files takes 15-60 s: skip it when the custom
    # folders hold every task, and fail fast on a name no built-in file mentions.
    paths = [str(p) for p in include_path or []]
    missing = names
    if paths:
        try:
            own = Manager(include_path=paths, include_defaults=False)
        except TypeError:  # an lm-eval without include_defaults
            own = None
        if own is not None:
            missing = _unknown(own, names)
            if not missing:
                return own
    absent = _absent_from_builtins(missing)
    if absent:
        raise unknown_error(absent)
    manager = Manager(include_path=paths or None)
    unknown = _unknown(manager, names)
    if unknown:
        raise unknown_error(unknown)
    return manager


def _absent_from_builtins(names: list[str]) -> list[str]:
    """Names (not patterns) that no file of lm-eval's built-in tasks contains: surely unknown.
    A byte search of the files (~1 s) instead of parsing them all."""
    import lm_eval.tasks

    left = {n for n in names if not any(c in n for c in "*?[")}
    root = Path(lm_eval.tasks.__file__).parent
    for path in root.rglob("*"):
        if not left:
            break
        if path.suffix in (".yaml", ".yml", ".py", ".json") and path.is_file():
            blob = path.read_bytes()
            left -= {n for n in left if n.encode() in blob}
    return [n for n in names if n in left]


def _unknown(manager: Any, names: list[str]) -> list[str]:
    known = set(manager.all_tasks)
    return [n for n in names if n not in known and not manager.match_tasks([n])]


# ---------------------------------------------------------------- running


def _model_args(model: str, device: str, dtype: str | None) -> tuple[dict[str, Any], str, str]:
    """lm-eval ``hf`` model arguments for an rtune model spec (offline, never the hub)."""
    from .models import model_name, resolve_model

    folder = resolve_model(model)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:  # fp32 on CPU: bf16 is slower on CPUs without bf16 instructions
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return {"pretrained": str(folder), "dtype": dtype}, device, model_name(model)


def limit_value(text: str) -> int | float:
    """``--limit``: a count, or a fraction below 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return int(value) if value >= 1 and value.is_integer() else value


def batch_value(text: str) -> int | str:
    """``--batch-size``: a number, or lm-eval's ``auto``."""
    if text == "auto" or text.startswith("auto:"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


@dataclass
class BenchConfig:
    """The tasks and how lm-eval runs them."""

    tasks: str | Sequence[str] = settings_field(
        help="comma-separated lm-eval task or group names, e.g. "
        "mmlu,gsm8k,arc_challenge,hellaswag,truthfulqa_mc2,ifeval")
    include_path: str | Path | Sequence[str | Path] | None = settings_field(
        None, "folder of custom lm-eval task YAML files (repeatable)", metavar="DIR")
    limit: int | float | None = settings_field(
        None, "at most this many examples per task (a fraction if below 1); for quick checks, "
        "not for reported numbers", type=limit_value)
    batch_size: int | str = settings_field(
        8, "batch size, or 'auto' to let lm-eval find the largest that fits", type=batch_value)
    device: str = settings_field("auto", "'auto' (CUDA when available), 'cpu', 'cuda', "
                                 "'cuda:1', ...")
    dtype: str | None = settings_field(
        None, "model dtype (default: bfloat16 on CUDA, float32 on CPU)")
    num_fewshot: int | None = settings_field(
        None, "few-shot examples per question (default: each task's own)")
    apply_chat_template: bool = settings_field(
        False, "wrap prompts in the model's saved chat template (instruction-tuned models)")
    gen_kwargs: str | None = settings_field(
        None, "generation settings for generate-until tasks, e.g. max_gen_toks=1024. "
        "Reflection-style models think before answering: give them room and stop them after "
        "the answer, e.g. max_gen_toks=2048,until=</output> (a task's own stop strings such as "
        "a blank line would cut them inside <thinking>)", metavar="K=V,...")
    output_only: bool = settings_field(
        False, "Reflection-style models: score only the <output> part of each generation "
        "(whole text when there is none, counted); generate-until tasks only")
    bootstrap_iters: int = settings_field(
        100000, "bootstrap resamples for the stderr of non-mean metrics (0 = none)")
    log_samples: bool = settings_field(
        False, "keep every scored sample (prompt, generation, filtered answer) in the JSON "
        "summary")
    quiet: bool = True  # lm-eval's own logging at WARNING


def bench(model: str | Any, tasks: str | Sequence[str] | BenchConfig, *,
          output: str | Path | None = None, **changes: Any) -> dict[str, Any]:
    """Run lm-eval tasks on ``model`` and return the summary (see :func:`summarize`).

    ``model``: an rtune model spec ('local', a Hugging Face folder, a .gguf file) run with
    lm-eval's ``hf`` backend, or an ``lm_eval.api.model.LM`` instance. ``tasks``: a
    :class:`BenchConfig`, or its task names with ``changes`` (its other fields) beside them.
    ``output``: ``.md`` writes the markdown table, anything else the summary as JSON.
    """
    config = (replace(tasks, **changes) if isinstance(tasks, BenchConfig)
              else BenchConfig(tasks, **changes))
    tasks, include_path, limit = config.tasks, config.include_path, config.limit
    batch_size, device, dtype = config.batch_size, config.device, config.dtype
    num_fewshot, gen_kwargs, output_only = config.num_fewshot, config.gen_kwargs, config.output_only
    apply_chat_template, log_samples = config.apply_chat_template, config.log_samples
    lm_eval = _lm_eval()
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks)
             if t.strip()]
    if not names:
        raise ConfigError("no task given (--tasks mmlu,gsm8k,...)")
    if isinstance(include_path, (str, Path)):
        include_path = [include_path]
    paths = [str(p) for p in include_path or []]
    for p in paths:
        if not Path(p).exists():
            raise ConfigError(f"--include-path {p} not found (a folder of lm-eval task YAMLs)")
    if limit is not None and limit <= 0:
        raise ConfigError("--limit must be > 0 (a count, or a fraction below 1)")
    if isinstance(model, str):
        model_args, device, model_label = _model_args(model, device, dtype)
        lm: Any = "hf"
    else:
        model_args, model_label, lm = None, type(model).__name__, model
        device = None if device == "auto" else device
    counters: dict[str, Any] = {}
    manager = _task_manager(paths, names, output_only=output_only, counters=counters)
    if config.quiet:
        for name in ("lm-eval", "lm_eval"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        results = lm_eval.simple_evaluate(
            model=lm, model_args=model_args, tasks=names, task_manager=manager, limit=limit,
            batch_size=batch_size, device=device, num_fewshot=num_fewshot,
            apply_chat_template=apply_chat_template, gen_kwargs=gen_kwargs,
            bootstrap_iters=config.bootstrap_iters, log_samples=log_samples)
    except (ConnectionError, FileNotFoundError) as e:
        raise ConfigError(f"lm-eval could not load a task's data ({type(e).__name__}: {e}); "
                          "rtune runs offline: real tasks need their datasets in the Hugging "
                          "Face cache, custom tasks a local data file") from None
    if results is None:  # not rank 0 of a distributed run
        return {}
    summary = summarize(results, model=model_label, tasks=names, output_only=output_only,
                        counters=counters)
    summary["settings"] = {"limit": limit, "batch_size": batch_size, "device": device,
                           "dtype": (model_args or {}).get("dtype"), "num_fewshot": num_fewshot,
                           "apply_chat_template": apply_chat_template, "gen_kwargs": gen_kwargs,
                           "include_path": paths, "output_only": output_only}
    if log_samples:
        summary["samples"] = results.get("samples", {})
    if output is not None:
        write_summary(summary, output)
    return summary


# ---------------------------------------------------------------- the summary


def summarize(results: dict[str, Any], *, model: str, tasks: Sequence[str],
              output_only: bool = False, counters: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """One row per (task, filter, metric) from lm-eval's results."""
    counters = counters or {}
    configs = results.get("configs", {})
    groups = set(results.get("groups", {})) | set(results.get("group_subtasks", {}))
    rows = []
    for task, metrics in results.get("results", {}).items():
        output_type = configs.get(task, {}).get("output_type")
        if task in groups:
            scored = "group"
        elif output_type == "generate_until":
            scored = "<output>" if output_only else "whole text"
        else:
            scored = "log-likelihood"
        n = _count(results, task)
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append({
                "task": task, "version": results.get("versions", {}).get(task),
                "n_shot": results.get("n-shot", {}).get(task), "n": n, "filter": filt,
                "metric": metric, "value": _number(value), "stderr": _number(stderr),
                "higher_is_better": results.get("higher_is_better", {}).get(task, {})
                .get(metric), "scored": scored})
    flagged = {name: {"flagged": c.flagged, "generations": c.seen}
               for name, c in counters.items()}
    return {"model": model, "tasks": list(tasks), "output_only": output_only, "rows": rows,
            "output_only_flagged": flagged,
            "lm_eval_version": results.get("lm_eval_version"),
            "config": {k: v for k, v in (results.get("config") or {}).items()
                       if isinstance(v, (str, int, float, bool, type(None)))}}


def _count(results: dict[str, Any], name: str) -> int | None:
    """Examples scored for a task, or summed over a group's tasks."""
    n = results.get("n-samples", {}).get(name, {}).get("effective")
    if n is not None:
        return int(n)
    subtasks = results.get("group_subtasks", {}).get(name)
    if not subtasks:
        return None
    counts = [_count(results, t) for t in subtasks]
    return None if None in counts else sum(counts)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if math.isnan(value) else float(value)
    return None


def format_markdown(summary: dict[str, Any]) -> str:
    """The summary as a markdown table (one row per task, filter and metric)."""
    lines = [f"**{summary['model']}**" + (" (scored on the `<output>` part)"
                                           if summary.get("output_only") else ""), "",
             "| task | n | n-shot | filter | metric | value | ± stderr | scored |",
             "|---|---:|---:|---|---|---:|---:|---|"]
    for r in summary["rows"]:
        value = "-" if r["value"] is None else f"{r['value']:.4f}"
        stderr = "-" if r["stderr"] is None else f"{r['stderr']:.4f}"
        lines.append(f"| {r['task']} | {r['n'] if r['n'] is not None else '-'} | "
                     f"{r['n_shot'] if r['n_shot'] is not None else '-'} | {r['filter']} | "
                     f"{r['metric']} | {value} | {stderr} | {r['scored']} |")
    for task, c in (summary.get("output_only_flagged") or {}).items():
        if c["flagged"]:
            lines.append(f"\n{task}: {c['flagged']}/{c['generations']} generations had no "
                         "<output> part and were scored whole")
    return "\n".join(lines) + "\n"


def write_summary(summary: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    if p.suffix.lower() in (".md", ".markdown"):
        write_text_atomic(p, format_markdown(summary))
    else:
        write_text_atomic(p, json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    return p
