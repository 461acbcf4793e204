"""The OpenAI batch line format, read and written.

The OpenAI Batch API and vLLM's offline runner (``python -m vllm.entrypoints.openai.run_batch
-i requests.jsonl -o results.jsonl --model M``) share it:

- request line: ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``,
  where ``body`` is the Chat Completions request;
- result line: ``{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null,
  "error": null | {"code", "message"} | ...}``, in any order. OpenAI puts successes in the
  output file and failed lines in the error file (``response`` null and an error code such as
  ``batch_expired``, or a non-200 ``status_code`` with an error body). vLLM writes both to one
  file; its error lines carry a 400 ``status_code``, ``body`` null and ``error`` as a string or
  an error object.

An input file of the OpenAI Batch API holds at most 50,000 requests and 200 MB.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

URL = "/v1/chat/completions"
MAX_LINES = 50_000
MAX_BYTES = 200 * 1000 * 1000  # 200 MB (the decimal reading: the smaller of the two)
# error codes of the OpenAI batch error file that a later submission may not hit again
_TRANSIENT_CODES = {"batch_expired", "batch_cancelled", "server_error", "rate_limit_exceeded",
                    "timeout", "internal_error"}
_scan = json.JSONDecoder().scan_once


def request_line(key: str, body_json: str) -> bytes:
    """One request line; ``body_json`` is the request body as JSON text."""
    return (f'{{"custom_id": "{key}", "method": "POST", "url": "{URL}", '
            f'"body": {body_json}}}\n').encode()


class BadLine(ValueError):
    """A result line that cannot be read (not JSON, cut short, no ``custom_id``)."""


@dataclass(slots=True)
class Result:
    """One result line: a reply (``text`` set) or an error (``reason`` set)."""

    key: str
    text: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    finish_reason: str | None = None
    model: str | None = None
    reason: str | None = None  # short code, as the online path names failures
    detail: str = ""
    transient: bool = False  # worth submitting again


def parse_result(raw: bytes | str) -> Result:
    """Read one result line; raises :class:`BadLine` with what is wrong."""
    try:  # bytes decoded here: json's own detection of their encoding costs more
        obj = _loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError:
        raise BadLine("not UTF-8 text") from None
    except ValueError:
        raise BadLine("not a JSON line (cut short or damaged)") from None
    if not isinstance(obj, dict):
        raise BadLine("not a JSON object")
    key = obj.get("custom_id")
    if not isinstance(key, str) or not key:
        raise BadLine("no custom_id")
    response = obj.get("response")
    error = obj.get("error")
    if response is not None and not isinstance(response, dict):
        raise BadLine("'response' is not an object")
    status = response.get("status_code") if response else None
    body = response.get("body") if response else None
    if error is None and status in (200, None) and isinstance(body, dict):
        return _reply(key, body)
    return _error(key, error, body, status)


def _loads(text: str) -> Any:
    """``json.loads`` of one line, through its C scanner directly when the line is one bare
    value (its wrappers cost ~10% of a result line's parse); ``json.loads`` otherwise, which
    also names what is wrong."""
    try:
        value, end = _scan(text, 0)
    except (StopIteration, ValueError):
        return json.loads(text)
    if end != len(text) and not text[end:].isspace():
        return json.loads(text)
    return value


def _reply(key: str, body: dict[str, Any]) -> Result:
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str):
        return Result(key, reason="bad_response", transient=True,
                      detail="reply without choices[0].message.content")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    tin, tout = usage.get("prompt_tokens"), usage.get("completion_tokens")
    model = body.get("model")
    return Result(key, text=text, tokens_in=tin if isinstance(tin, int) else None,
                  tokens_out=tout if isinstance(tout, int) else None,
                  finish_reason=first.get("finish_reason"),  # type: ignore[union-attr]
                  model=model if isinstance(model, str) else None)


def _error(key: str, error: Any, body: Any, status: Any) -> Result:
    """The reason of an error line, named as the online path names the same failure."""
    info = error if error is not None else body
    if isinstance(info, dict) and isinstance(info.get("error"), dict):
        info = info["error"]  # an error body / vLLM's ErrorResponse: {"error": {...}}
    if isinstance(info, dict):
        code = info.get("code") if isinstance(info.get("code"), str) else None
        detail = str(info.get("message") or code or info)
    else:
        code, detail = None, str(info) if info is not None else "no reply body"
    status = status if isinstance(status, int) else None
    text = detail.lower()
    if code == "batch_expired":
        reason = "expired"
    elif code == "batch_cancelled":
        reason = "cancelled"
    elif "context" in text and ("length" in text or "window" in text or "maximum" in text):
        reason = "context_length"
    elif status == 429 or code == "rate_limit_exceeded":
        reason = "rate_limited"
    elif status is not None and status != 200:
        reason = "bad_request" if status == 400 else f"http_{status}"
    else:
        reason = code or "batch_error"
    transient = (code in _TRANSIENT_CODES or status is None and code is None
                 or status is not None and (status >= 500 or status in (408, 409, 425, 429)))
    return Result(key, reason=reason, detail=detail.replace("\n", " ")[:300],
                  transient=transient and reason != "context_length")


@dataclass
class Shard:
    path: Path
    lines: int = 0
    bytes: int = 0


class ShardWriter:
    """Request lines into numbered files ``00000.jsonl``, ``00001.jsonl``... of at most
    ``per_file`` lines (and the API's limits). Each file is written as ``.part`` and renamed
    when full, so a file with its final name is complete."""

    def __init__(self, folder: str | Path, *, per_file: int = MAX_LINES,
                 max_lines: int = MAX_LINES, max_bytes: int = MAX_BYTES):
        self.folder = Path(folder)
        self.per_file = max(1, min(per_file, max_lines))
        self.max_bytes = max_bytes
        self.shards: list[Shard] = []
        self._file: Any = None

    def write(self, line: bytes) -> Shard:
        shard = self.shards[-1] if self._file is not None else None
        if shard is None or shard.lines >= self.per_file or (
                shard.lines and shard.bytes + len(line) > self.max_bytes):
            shard = self._next()
        self._file.write(line)
        shard.lines += 1
        shard.bytes += len(line)
        return shard

    def _next(self) -> Shard:
        self._finish()
        self.folder.mkdir(parents=True, exist_ok=True)
        shard = Shard(self.folder / f"{len(self.shards):05d}.jsonl")
        self.shards.append(shard)
        self._file = open(_part(shard.path), "wb")  # noqa: SIM115 (closed in _finish)
        return shard

    def _finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            path = self.shards[-1].path
            os.replace(_part(path), path)

    def close(self) -> list[Shard]:
        self._finish()
        return self.shards

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            _part(self.shards[-1].path).unlink(missing_ok=True)


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")
