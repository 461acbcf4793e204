"""Answer evaluation test sets with a model: a local one (transformers, batched greedy, left
padding, the model's own chat template) or any OpenAI-compatible endpoint.

Every answer is committed to the run store (namespace ``generations``) with the settings that
made it; a rerun skips what is done and regenerates only answers whose settings changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .cli_fields import settings_field
from .endpoint_config import EndpointConfig
from .errors import ConfigError, InputError
from .io import write_text_atomic
from .model_spec import ModelSpec
from .oracle import PermanentError, TransientError, is_local
from .oracle.base import ChatRequest
from .progress import RunProgress
from .store import RunStore
from .testsets import Question, load_test_set

NAMESPACE = "generations"


EndpointOptions = EndpointConfig  # the older name


@dataclass
class GenerateConfig(EndpointConfig):
    """The model (:class:`~rtune.endpoint_config.EndpointConfig`'s fields) and how it answers."""

    name: str | None = settings_field(
        None, "generator name recorded with the answers (default: the served model or the "
        "model folder's name)")
    limit: int | None = settings_field(
        None, "only the first N questions of each test set (a quick try)", metavar="N")
    max_tokens: int = settings_field(1024, "answer budget in tokens")
    temperature: float = settings_field(0.0, "sampling temperature (0 = greedy)")
    top_p: float = settings_field(1.0, "nucleus sampling (temperature > 0)")
    system: str | None = settings_field(None, "system prompt put before every question")
    output_only: bool = settings_field(
        False, "Reflection-70B-style models: keep only the <output> part of each answer (the "
        "whole text when there is none; flagged)")

    def __post_init__(self, oracle: str | None = None) -> None:
        if self.max_tokens < 1:
            raise ConfigError("--max-tokens must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("--limit must be >= 1")
        super().__post_init__(oracle)


def generator_name(spec: str, model: str | None) -> str:
    """A readable name for a model spec: the served model, or the local folder's name."""
    return ModelSpec.parse(spec, model).display_name


@dataclass(frozen=True)
class GenerationSettings:
    model: str
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 1024
    system: str | None = None

    def request(self, question: Question) -> ChatRequest:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": question.instruction})
        return ChatRequest(messages=messages, model=self.model, temperature=self.temperature,
                           top_p=self.top_p, max_tokens=self.max_tokens)


def load_questions(test_sets: Iterable[str | Path], limit: int | None = None) -> list[Question]:
    """The questions of every test set (the first ``limit`` of each when given)."""
    questions: list[Question] = []
    names: dict[str, str] = {}
    for path in test_sets:
        qs = load_test_set(path)
        name = qs[0].test_set
        if name in names:
            raise InputError(str(path), f"test set name '{name}' is already taken by "
                             f"{names[name]}: rename one of the files")
        names[name] = str(path)
        questions += qs[:limit] if limit is not None else qs
    if not questions:
        raise ConfigError("no test set given (--test-set FILE)")
    return questions


def generate(spec: str | GenerateConfig, test_sets: Sequence[str | Path], output: str | Path,
             *, run_dir: str | Path | None = None, alpaca_eval: str | Path | None = None,
             options: EndpointConfig | None = None, progress: bool = False,
             **changes: Any) -> dict[str, Any]:
    """Answer every question of ``test_sets`` (the first ``limit`` of each when given) and
    write them to ``output`` (JSON lines). ``spec``: a :class:`GenerateConfig`, or the model
    spec, with ``changes`` (its other fields: ``model=``, ``max_tokens=``, ...) and
    ``options`` (endpoint settings) beside it.

    Returns a summary: counts, failures (not stored; a rerun retries them), paths.
    """
    if isinstance(spec, GenerateConfig):
        config = replace(spec, **changes)
    else:
        endpoint = options.endpoint_values() if options is not None else {}
        config = GenerateConfig(**{**endpoint, **changes, "spec": spec})
    spec, model, output_only = config.spec, config.model, config.output_only
    questions = load_questions(test_sets, config.limit)
    config.require()
    generator = config.name or generator_name(spec, model)
    settings = GenerationSettings(model=model or generator, temperature=config.temperature,
                                  top_p=config.top_p, max_tokens=config.max_tokens,
                                  system=config.system)
    run_dir = Path(run_dir) if run_dir else Path("runs") / f"generate-{Path(output).stem}"
    failures: list[dict[str, Any]] = []
    with RunStore(run_dir, writer="generate") as store:
        done = {k: v for k, v in store.items(NAMESPACE)}
        todo = [q for q in questions if not _fresh(done.get(q.key), settings)]
        if todo:
            with RunProgress(len(todo), enabled=progress, label="generate") as bar:
                engine = config.engine(store, on_call=bar.add_call)

                async def one(q: Question) -> None:
                    try:
                        result = await engine.complete(settings.request(q), stage="generate")
                    except (TransientError, PermanentError) as e:
                        failures.append({"key": q.key, "reason": e.reason, "detail": str(e)})
                    else:
                        store.put_item(NAMESPACE, q.key, {
                            "question_id": q.id, "test_set": q.test_set,
                            "instruction": q.instruction, "output": result.text,
                            "generator": generator, "finish_reason": result.finish_reason,
                            "tokens_out": result.tokens_out, "settings": asdict(settings)})
                    bar.advance()

                engine.run(one, todo)
        store.set_meta("generate", {"spec": spec if is_local(spec) else "endpoint",
                                    "generator": generator, "settings": asdict(settings)})
        rows = [_row(store.get_item(NAMESPACE, q.key), generator, output_only)
                for q in questions if _fresh(store.get_item(NAMESPACE, q.key), settings)]
    _write_jsonl(rows, Path(output))
    summary: dict[str, Any] = {
        "output": str(output), "run_dir": str(run_dir), "generator": generator,
        "questions": len(questions), "written": len(rows), "generated": len(todo) - len(failures),
        "failed": failures, "settings": asdict(settings)}
    if output_only:
        summary["flagged"] = sum(1 for r in rows if r.get("flagged"))
    if alpaca_eval:
        export_alpaca_eval(rows, alpaca_eval)
        summary["alpaca_eval"] = str(alpaca_eval)
    return summary


def _fresh(stored: dict[str, Any] | None, settings: GenerationSettings) -> bool:
    return stored is not None and stored.get("settings") == asdict(settings)


def _row(stored: dict[str, Any], generator: str, output_only: bool) -> dict[str, Any]:
    row = {k: stored[k] for k in ("question_id", "test_set", "instruction", "output")}
    row["generator"] = generator
    row["settings"] = stored["settings"]
    if output_only:
        from .reflection import extract_output

        answer, flagged = extract_output(stored["output"])
        row.update(output=answer, raw_output=stored["output"], flagged=flagged)
    return row


def export_alpaca_eval(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """AlpacaEval's model-outputs format: a JSON list of {instruction, output, generator,
    dataset}."""
    items = [{"instruction": r["instruction"], "output": r["output"],
              "generator": r["generator"], "dataset": r["test_set"]} for r in rows]
    write_text_atomic(Path(path), json.dumps(items, ensure_ascii=False, indent=2) + "\n")
    return len(items)


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
