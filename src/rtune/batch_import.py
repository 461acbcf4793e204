"""Import result files in the OpenAI batch format into a run store.

Streaming: a file is read line by line and committed in chunks, so memory stays flat in the
file's size. Idempotent: a reply whose call is already stored is skipped (never overwritten),
and an error line already applied (known by its line ``id``) is not counted again, so a
second import of a file changes nothing. Tolerant: a line that cannot be read is reported
with file:line and the rest goes on. A result whose ``custom_id`` is no request key of this
run (a file of another run, or one made for another model: the key hashes the model) is
refused and stored nowhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from .batch_ledger import Ledger, Reply
from .oracle.batch_files import BadLine, Result, parse_result
from .oracle.pricing import Prices

CHUNK = 2000  # lines per transaction
MAX_PROBLEMS = 10  # problem lines kept per file (the rest are counted)


@dataclass
class FileReport:
    path: str
    lines: int = 0
    imported: int = 0
    already: int = 0  # answered before: a second import, or the same key twice
    errors: dict[str, int] = field(default_factory=dict)  # error lines by reason
    refused: int = 0  # keys this run never made
    bad: int = 0  # lines that cannot be read
    cost: float = 0.0
    problems: list[str] = field(default_factory=list)

    def problem(self, line: int, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{self.path}:{line}: {text}")

    def lines_of_problems(self) -> list[str]:
        """What to print: the problems kept, then a count of the rest, then a verdict when
        the whole file belongs to another run."""
        out = list(self.problems)
        hidden = self.bad + self.refused - len(self.problems)
        if hidden > 0:
            out.append(f"{self.path}: ... and {hidden} more such line(s)")
        if self.refused and self.refused == self.lines - self.bad:
            out.append(f"{self.path}: none of its {self.refused} results were made by this "
                       "run (a file of another run, or made for another model); nothing "
                       "imported from it")
        return out


class Importer:
    """Imports result files into one run's ledger. ``retries``: how many times a request
    whose line failed for a passing reason goes back to pending; ``resubmit``: whether failed
    lines may go back at all (not when they will run online instead)."""

    def __init__(self, ledger: Ledger, prices: Prices, *, retries: int = 2,
                 resubmit: bool = True, chunk: int = CHUNK):
        self.ledger = ledger
        self.prices = prices
        self.retries = retries
        self.resubmit = resubmit
        self.chunk = chunk

    def import_file(self, path: str | Path) -> FileReport:
        report = FileReport(str(path))
        lines: list[tuple[int, bytes]] = []
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                lines.append((number, raw))
                if len(lines) >= self.chunk:
                    self._chunk(lines, report)
                    lines = []
        if lines:
            self._chunk(lines, report)
        return report

    def _chunk(self, lines: list[tuple[int, bytes]], report: FileReport) -> None:
        parsed: list[tuple[int, bytes, Result]] = []
        for number, raw in lines:
            report.lines += 1
            try:
                parsed.append((number, raw, parse_result(raw)))
            except BadLine as e:
                report.bad += 1
                report.problem(number, str(e))
        known = self.ledger.lookup([r.key for _, _, r in parsed])
        replies: list[tuple[Reply, str | None, str]] = []
        seen: set[str] = set()
        with self.ledger.transaction():
            for number, raw, result in parsed:
                entry = known.get(result.key)
                if entry is None:
                    report.refused += 1
                    report.problem(number, f"custom_id {result.key[:16]!r} is no request of "
                                   "this run (another run, or another model)")
                    continue
                state, stage, body, _ = entry
                if state == "done" or result.key in seen:
                    report.already += 1
                    continue
                if result.text is None:
                    self._error(result, stage, raw, report)
                    continue
                seen.add(result.key)
                replies.append((self._reply(result, body), stage, body or "{}"))
                report.imported += 1
            self.ledger.store_replies(replies)
        report.cost += sum(r.cost for r, _, _ in replies)

    def _reply(self, result: Result, body: str | None) -> Reply:
        model = result.model or _body_model(body)
        tin = result.tokens_in if result.tokens_in is not None else len(body or "") // 4 + 1
        tout = result.tokens_out if result.tokens_out is not None else \
            len(result.text or "") // 4 + 1
        return Reply(result.key, model, result.text or "", result.finish_reason, tin, tout,
                     self.prices.cost(model, tin, tout, batch=True))

    def _error(self, result: Result, stage: str | None, raw: bytes,
               report: FileReport) -> None:
        reason = result.reason or "batch_error"
        line_id = _line_id(raw)
        state = self.ledger.fail(result.key, stage, reason, result.detail,
                                 retry=self.resubmit and result.transient,
                                 retries=self.retries, line_id=line_id)
        if state is None:
            report.already += 1
        else:
            report.errors[reason] = report.errors.get(reason, 0) + 1


def _line_id(raw: bytes) -> str:
    """The result line's own ``id`` (OpenAI ``batch_req_...``, vLLM ``vllm-...``), else a hash
    of the line."""
    head = raw[:200]
    start = head.find(b'"id"')
    if start >= 0:
        rest = head[start + 4:].lstrip(b" :")
        if rest.startswith(b'"'):
            end = rest.find(b'"', 1)
            if end > 0:
                return rest[1:end].decode("utf-8", "replace")
    return hashlib.sha1(raw).hexdigest()


def _body_model(body: str | None) -> str:
    """The model named in a request body (its ``"model"`` field), without parsing it all."""
    if not body:
        return ""
    start = body.find('"model": "')
    if start < 0:
        return ""
    start += len('"model": "')
    return body[start:body.find('"', start)]
