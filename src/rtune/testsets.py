"""Evaluation test sets: the five pairwise-evaluation formats and any Alpaca/JSONL file.

Each format has its own question field: Vicuna ``text``, Koala ``prompt``, WizardLM
``Instruction``, Self-Instruct ``instruction`` + ``instances`` (the question is the instruction
and the first instance's input), LIMA ``conversations`` (a string, or a list whose first user
turn is the question); anything else with ``instruction`` (+ ``input``) or ``question`` works
too. A test set is named after its file: ``vicuna_test_set.jsonl`` -> ``vicuna``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .io import json_items

_ID_FIELDS = ("question_id", "id", "idx")
# looked up in this order, in any letter case (WizardLM writes "Instruction")
_QUESTION_FIELDS = ("text", "prompt", "instruction", "question", "query", "conversations",
                    "turns")
_NAME_SUFFIX = re.compile(r"([._-](test[._-]?set|testset|test|questions?|prompts?))+$",
                          re.IGNORECASE)


@dataclass(frozen=True)
class Question:
    """One test question: ``id`` is unique within its test set."""

    test_set: str
    id: str
    instruction: str
    index: int

    @property
    def key(self) -> str:
        return f"{self.test_set}/{self.id}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def test_set_name(path: str | Path) -> str:
    """``vicuna_test_set.jsonl`` -> ``vicuna``; ``recycled.koala.jsonl`` -> ``koala``."""
    stem = Path(path).name
    for suffix in (".jsonl", ".ndjson", ".json"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = _NAME_SUFFIX.sub("", stem) or stem
    return stem.rsplit(".", 1)[-1] or stem


def question_of(item: dict[str, Any], *, path: str, line: int | None,
                record: int) -> str:
    """The question text of one raw test-set record, whatever its format."""

    def bad(message: str, field: str | None) -> InputError:
        return InputError(path, message, line=line, record=record, field=field)

    present = {str(k).lower(): k for k in item}
    for name in _QUESTION_FIELDS:
        if name not in present:
            continue
        value = item[present[name]]
        if name in ("conversations", "turns"):
            value = _first_user_turn(value, bad)
        elif not isinstance(value, str):
            raise bad(f"expected a string, got {type(value).__name__}", name)
        if name == "instruction":
            value = _with_input(value, item, bad)
        if not value.strip():
            raise bad("empty question", name)
        return value
    raise bad("no question field: expected one of " + ", ".join(_QUESTION_FIELDS)
              + " (Vicuna text, Koala prompt, WizardLM Instruction, Self-Instruct instruction"
              " + instances, LIMA conversations, Alpaca instruction)", None)


def question_id(item: dict[str, Any], index: int) -> str:
    """A record's question id (question_id, id or idx), else its position in the file."""
    return next((str(item[f]) for f in _ID_FIELDS if item.get(f) is not None), str(index))


def _first_user_turn(value: Any, bad) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        first = value[0]
        if isinstance(first, str):
            return first
        if isinstance(first, dict):
            text = first.get("value", first.get("content"))
            if isinstance(text, str):
                return text
    raise bad("expected a string or a list of turns", "conversations")


def _with_input(instruction: str, item: dict[str, Any], bad) -> str:
    extra = item.get("input")
    if "instances" in item:
        instances = item["instances"]
        if not isinstance(instances, list):
            raise bad("expected a list of {input, output}", "instances")
        if instances:
            if not isinstance(instances[0], dict):
                raise bad("expected an object with 'input'", "instances[0]")
            extra = instances[0].get("input", "")
    if extra is None:
        extra = ""
    if not isinstance(extra, str):
        raise bad(f"expected a string, got {type(extra).__name__}", "input")
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


def load_test_set(path: str | Path, *, name: str | None = None) -> list[Question]:
    """The questions of a test-set file (JSON lines or a JSON list), in file order."""
    p = Path(path)
    if not p.is_file():
        raise InputError(str(p), "test set not found")
    name = name or test_set_name(p)
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for index, line, item in json_items(p):
        if not isinstance(item, dict):
            raise InputError(str(p), f"expected a JSON object, got {type(item).__name__}",
                             line=line, record=index)
        text = question_of(item, path=str(p), line=line, record=index)
        qid = question_id(item, index)
        if qid in seen:
            raise InputError(str(p), f"duplicate question id {qid!r} (first at record "
                             f"{seen[qid]})", line=line, record=index, field="id")
        seen[qid] = index
        questions.append(Question(test_set=name, id=qid, instruction=text, index=index))
    if not questions:
        raise InputError(str(p), "the test set has no questions")
    return questions
