"""Streaming dataset readers and writers.

Readers yield :class:`Record` one at a time, so memory does not grow with the dataset. Every
bad record raises :class:`InputError` naming the file, line/record and field, unless the caller
passes ``on_invalid`` to collect it and go on (``--skip-invalid``). A UTF-8 byte order mark at
the start of a file is skipped. Text UTF-8 cannot encode (lone surrogates from ``\\ud800``
escapes) is repaired by :func:`rtune.text.repair_text` and the record's ``extra["repaired"]``
says which fields changed.
"""

from __future__ import annotations

import codecs
import json
import mmap
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import InputError
from .records import Record
from .text import REPAIR_NOTE, repair_fields, repair_value

INPUT_FORMATS = ("auto", "alpaca", "jsonl", "sharegpt", "messages", "parquet", "hf")
OUTPUT_FORMATS = ("jsonl", "alpaca", "alpaca-jsonl", "sharegpt", "messages")

_USER_ROLES = {"human": "user", "user": "user"}
_ASSISTANT_ROLES = {"gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                    "bard": "assistant", "bing": "assistant", "model": "assistant"}
_SYSTEM_ROLES = {"system": "system"}

OnInvalid = Callable[[InputError], None]


def detect_format(path: str | os.PathLike) -> str:
    """The container format of ``path``: alpaca (JSON list), jsonl, parquet or hf (folder)."""
    p = Path(path)
    if not p.exists():
        raise InputError(str(p), "file not found")
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists():
            return "hf"
        raise InputError(str(p), "a folder that is not a Hugging Face save_to_disk dataset")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    with open(p, "rb") as f:
        head = f.read(4096).removeprefix(codecs.BOM_UTF8).lstrip(b" \t\r\n")
    if head.startswith(b"["):
        return "alpaca"
    if head.startswith(b"{"):
        if _single_json_object(p):
            raise InputError(str(p), "holds a single JSON object, not a dataset: expected a JSON "
                             "list of records ([{...}, {...}]) or JSON lines (one record per "
                             "line)")
        return "jsonl"
    raise InputError(str(p), "unknown format: expected a JSON list, JSON lines, parquet or a "
                     "Hugging Face dataset folder")


def _single_json_object(path: Path) -> bool:
    """True when the whole file is one JSON value. JSON lines stop the parser at the second
    record (trailing data), so this reads little of a JSONL file."""
    import ijson

    with open(path, "rb") as f:
        _skip_bom(f)
        try:
            for _ in ijson.parse(f):
                pass
        except Exception:  # noqa: BLE001 - any parse error: not one JSON value
            return False
    return True


def _skip_bom(f: IO[bytes]) -> None:
    if f.read(len(codecs.BOM_UTF8)) != codecs.BOM_UTF8:
        f.seek(0)


def record_shape(item: dict[str, Any]) -> str:
    """alpaca | sharegpt | messages: which record layout a raw dict uses."""
    if "conversations" in item:
        return "sharegpt"
    if "messages" in item:
        return "messages"
    return "alpaca"


def read_records(path: str | os.PathLike, *, format: str = "auto",
                 on_invalid: OnInvalid | None = None) -> Iterator[Record]:
    """Yield the records of a dataset file, streaming.

    ``on_invalid`` receives each bad record's error instead of raising it.
    """
    fmt = detect_format(path) if format in ("auto", "sharegpt", "messages") else format
    path = str(path)
    raw_items: Iterable[tuple[int, int | None, Any]]
    if fmt == "alpaca":
        raw_items = _iter_json_list(path)
    elif fmt == "jsonl":
        raw_items = _iter_jsonl(path)
    elif fmt == "parquet":
        raw_items = _iter_parquet(path)
    elif fmt == "hf":
        raw_items = _iter_hf(path)
    else:
        raise InputError(path, f"unknown input format '{format}' (choose from {INPUT_FORMATS})")
    for index, line, item in raw_items:
        try:
            if isinstance(item, InputError):
                raise item
            yield parse_item(item, path=path, index=index, line=line)
        except InputError as err:
            if on_invalid is None:
                raise
            on_invalid(err)


def parse_item(item: Any, *, path: str, index: int, line: int | None = None) -> Record:
    """One raw dict → Record, validating types and required fields; strings UTF-8 cannot
    encode are repaired, noted in ``extra["repaired"]``."""
    changed: list[str] = []
    if isinstance(item, dict):
        item, changed = repair_fields(item)
    rec = _parse_item(item, path=path, index=index, line=line)
    if changed:
        rec.extra["repaired"] = f"{', '.join(changed)}: {REPAIR_NOTE}"
    return rec


def _parse_item(item: Any, *, path: str, index: int, line: int | None) -> Record:
    def bad(message: str, field: str | None = None) -> InputError:
        return InputError(path, message, line=line, record=index, field=field)

    if not isinstance(item, dict):
        raise bad(f"expected a JSON object, got {type(item).__name__}")
    source_id = item.get("id")
    source_id = str(source_id) if source_id is not None else None
    shape = record_shape(item)
    if shape == "alpaca":
        for name in ("instruction", "output"):
            if name not in item:
                hint = "" if name == "output" or "output" in item else \
                    " (expected instruction/output, conversations or messages)"
                raise bad(f"missing field{hint}", name)
        values = {}
        for name in ("instruction", "input", "output", "system"):
            value = item.get(name, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise bad(f"expected a string, got {type(value).__name__}", name)
            values[name] = value
        for name in ("instruction", "output"):
            if not values[name].strip():
                raise bad("empty", name)
        if "kind" in item and "source_index" in item:  # an rtune output: keep its provenance
            return Record.from_dict({**item, **values, "system": values["system"] or None})
        return Record(instruction=values["instruction"], input=values["input"],
                      output=values["output"], system=values["system"] or None,
                      source_index=index, source_id=source_id)
    messages = _conversation(item, shape, bad)
    return _record_from_messages(messages, index=index, source_id=source_id, bad=bad)


def _conversation(item: dict, shape: str, bad) -> list[dict[str, str]]:
    key = "conversations" if shape == "sharegpt" else "messages"
    turns = item[key]
    if not isinstance(turns, list) or not turns:
        raise bad("expected a non-empty list of turns", key)
    role_key, text_key = ("from", "value") if shape == "sharegpt" else ("role", "content")
    roles = {**_USER_ROLES, **_ASSISTANT_ROLES, **_SYSTEM_ROLES}
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise bad(f"turn {i} is not an object", f"{key}[{i}]")
        role, text = turn.get(role_key), turn.get(text_key)
        if not isinstance(role, str) or role.lower() not in roles:
            raise bad(f"unknown role {role!r}", f"{key}[{i}].{role_key}")
        if not isinstance(text, str):
            raise bad(f"expected a string, got {type(text).__name__}", f"{key}[{i}].{text_key}")
        out.append({"role": roles[role.lower()], "content": text})
    return out


def _record_from_messages(messages: list[dict[str, str]], *, index: int, source_id: str | None,
                          bad) -> Record:
    system = None
    body = messages
    if body and body[0]["role"] == "system":
        system, body = body[0]["content"], body[1:]
    users = [m for m in body if m["role"] == "user"]
    assistants = [m for m in body if m["role"] == "assistant"]
    if not users:
        raise bad("no user turn", "messages")
    if not assistants:
        raise bad("no assistant turn", "messages")
    if not users[0]["content"].strip():
        raise bad("empty user turn", "instruction")
    single = len(body) == 2 and body[0]["role"] == "user" and body[1]["role"] == "assistant"
    if single:
        if not body[1]["content"].strip():
            raise bad("empty assistant turn", "output")
        return Record(instruction=body[0]["content"], output=body[1]["content"], system=system,
                      source_index=index, source_id=source_id)
    return Record(instruction=users[0]["content"], output=assistants[0]["content"], system=system,
                  messages=messages, source_index=index, source_id=source_id)


def json_items(path: str | os.PathLike) -> Iterator[tuple[int, int | None, Any]]:
    """``(index, line, item)`` of a small JSON-list or JSON-lines file (test sets, answer
    files), read whole; malformed JSON raises an :class:`InputError` with its line."""
    text = Path(path).read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(str(path), f"not valid JSON: {e.msg}", line=e.lineno) from None
        yield from ((i, None, repair_value(item)[0]) for i, item in enumerate(data))
        return
    index = 0
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            yield index, n, repair_value(json.loads(raw))[0]
        except json.JSONDecodeError as e:
            raise InputError(str(path), f"malformed JSON: {e.msg} at column {e.colno}",
                             line=n) from None
        index += 1


def _iter_jsonl(path: str) -> Iterator[tuple[int, int | None, Any]]:
    index = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield index, lineno, InputError(path, f"not UTF-8 ({e.reason} at byte {e.start})",
                                                line=lineno, record=index)
                index += 1
                continue
            try:
                item = json.loads(text)
            except json.JSONDecodeError as e:
                item = InputError(path, f"malformed JSON: {e.msg} at column {e.colno}",
                                  line=lineno, record=index)
            yield index, lineno, item
            index += 1


# a surrogate pair escape, or (group 1) a surrogate escape that is not part of a pair
_SURROGATE_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|(\\u[dD][89a-fA-F][0-9a-fA-F]{2})")


def _lone_surrogate_escape(path: str) -> bool:
    if os.path.getsize(path) == 0:
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return any(match.group(1) for match in _SURROGATE_ESCAPE.finditer(m))


def _iter_json_list(path: str) -> Iterator[tuple[int, int | None, Any]]:
    """Streams a JSON list with ijson's C parser, which turns a lone surrogate escape into '?'
    or into a wrong character; a file holding one is read by ijson's pure-Python parser,
    which keeps it for the repair that notes the change."""
    import ijson

    items = ijson.items
    if _lone_surrogate_escape(path):
        items = ijson.get_backend("python").items
    index = 0
    with open(path, "rb") as f:
        _skip_bom(f)
        try:
            for item in items(f, "item", use_float=True):
                yield index, None, item
                index += 1
        except UnicodeDecodeError as e:
            raise InputError(path, f"not UTF-8 ({e.reason})", record=index) from None
        except ijson.JSONError as e:
            raise InputError(path, f"malformed JSON after {index} records: {e}",
                             record=index) from None


def _iter_parquet(path: str) -> Iterator[tuple[int, int | None, Any]]:
    from .extras import require

    require("data", f"reading {path}")
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for item in batch.to_pylist():
            yield index, None, item
            index += 1


def _iter_hf(path: str) -> Iterator[tuple[int, int | None, Any]]:
    from .extras import require

    require("data", f"reading {path}")
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(path)
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise InputError(path, f"a DatasetDict without a 'train' split (has {list(ds)})")
        ds = ds["train"]
    for index, item in enumerate(ds):
        yield index, None, item


# ---------------------------------------------------------------- writers


def record_to_format(rec: Record, fmt: str) -> dict[str, Any]:
    if fmt == "jsonl":
        return rec.to_dict()
    if fmt in ("alpaca", "alpaca-jsonl"):
        return rec.to_alpaca()
    if fmt == "messages":
        return {"messages": rec.to_messages()}
    if fmt == "sharegpt":
        names = {"user": "human", "assistant": "gpt", "system": "system"}
        return {"conversations": [{"from": names[m["role"]], "value": m["content"]}
                                  for m in rec.to_messages()]}
    raise ValueError(f"unknown output format '{fmt}' (choose from {OUTPUT_FORMATS})")


def write_records(records: Iterable[Record], path: str | os.PathLike, *,
                  format: str = "jsonl") -> int:
    """Write records atomically (temp file + rename); returns the count written."""
    n = 0
    with atomic_output(path) as f:
        as_list = format == "alpaca"
        if as_list:
            f.write("[\n")
        for rec in records:
            line = json.dumps(record_to_format(rec, format), ensure_ascii=False)
            if as_list:
                f.write((",\n" if n else "") + line)
            else:
                f.write(line + "\n")
            n += 1
        if as_list:
            f.write("\n]\n")
    return n


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[IO[str]]:
    """A UTF-8 text file that appears whole or not at all: written to a temp file beside
    ``path``, renamed over it on success, removed on failure. The temp file is created with
    mode 0666, so the umask applies as to any new file (``tempfile.mkstemp`` would make it
    0600, private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (see :func:`atomic_output`)."""
    with atomic_output(path) as f:
        f.write(text)


def input_output_format(path: str | os.PathLike) -> str:
    """The output format matching an input file (``--format input``)."""
    fmt = detect_format(path)
    if fmt == "alpaca":
        return "alpaca"
    first = next(read_records(path, on_invalid=lambda e: None), None)
    if fmt == "jsonl" and first is not None:
        with open(path, "rb") as f:
            _skip_bom(f)
            for raw in f:
                if raw.strip():
                    try:
                        shape = record_shape(json.loads(raw))
                    except (ValueError, AttributeError):
                        shape = "alpaca"
                    return {"alpaca": "alpaca-jsonl"}.get(shape, shape)
    return "jsonl"
