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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .batch_ledger import Ledger
from .oracle.batch_files import BadLine, Result, parse_result
from .oracle.pricing import BATCH_DISCOUNT, Prices
from .text import repair_text

# lines stored at once, their keys sorted: the larger the chunk, the more of its inserts into
# the call index share a page (2,000 to 20,000 lines: ~35% less SQLite time a line); it bounds
# the memory held (~1.2 KB a line)
CHUNK = 20_000
# chunks per transaction: a page of the call index written by several chunks goes to the WAL
# and the store once per transaction (1M lines: 1 to 5 chunks, ~15% less time)
PER_COMMIT = 5
MAX_PROBLEMS = 10  # problem lines kept per file (the rest are counted)
Reply = tuple[str, str, str, str | None, int, int, float]


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


@dataclass(slots=True)
class _Chunk:
    """Lines parsed and waiting to be stored: only what is stored is kept."""

    replies: list[Reply] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)  # the line of each reply
    errors: list[tuple[int, str, Result]] = field(default_factory=list)  # line, line id


class Importer:
    """Imports result files into one run's ledger. ``retries``: how many times a request
    whose line failed for a passing reason goes back to pending; ``resubmit``: whether failed
    lines may go back at all (not when they will run online instead)."""

    def __init__(self, ledger: Ledger, prices: Prices, *, model: str = "", retries: int = 2,
                 resubmit: bool = True, chunk: int = CHUNK, per_commit: int = PER_COMMIT):
        self.ledger = ledger
        self.prices = prices
        self.model = model  # the run's model: for a reply that names none
        self._models: dict[str, tuple[str, tuple[float, float]]] = {}  # repaired name, prices
        self.retries = retries
        self.resubmit = resubmit
        self.chunk = chunk
        self.per_commit = per_commit

    def import_file(self, path: str | Path) -> FileReport:
        report = FileReport(str(path))
        with open(path, "rb") as f:
            chunks = self._chunks(f, report)
            more = True
            while more:
                with self.ledger.transaction():
                    more = self._store_some(chunks, report)
        self.ledger.settle_done()
        return report

    def _store_some(self, chunks: Iterator[_Chunk], report: FileReport) -> bool:
        """Store the next ``per_commit`` chunks; whether more may follow. Each chunk is let go
        before the next is read: one at a time in memory."""
        for _ in range(self.per_commit):
            chunk = next(chunks, None)
            if chunk is None:
                return False
            self._store(chunk, report)
            del chunk
        return True

    def _chunks(self, f: BinaryIO, report: FileReport) -> Iterator[_Chunk]:
        """The file's lines parsed, ``chunk`` at a time; unreadable ones go in the report."""
        chunk = _Chunk()
        for number, raw in enumerate(f, 1):
            if raw.isspace():
                continue
            report.lines += 1
            try:
                result = parse_result(raw)
            except BadLine as e:
                report.bad += 1
                report.problem(number, str(e))
                continue
            if result.text is None:
                chunk.errors.append((number, _line_id(raw), result))
            else:
                chunk.replies.append(self._reply(result))
                chunk.numbers.append(number)
            if len(chunk.numbers) + len(chunk.errors) >= self.chunk:
                yield chunk
                chunk = _Chunk()
        if chunk.numbers or chunk.errors:
            yield chunk

    def _store(self, chunk: _Chunk, report: FileReport) -> None:
        """Store a chunk's replies and errors; inside a transaction."""
        replies, numbers, errors = chunk.replies, chunk.numbers, chunk.errors
        stored = self.ledger.store_replies(replies)
        report.imported += stored
        unknown: set[str] = set()
        if stored < len(replies) or errors:  # some were refused or answered before
            keys = [r[0] for r in replies] + [r.key for _, _, r in errors]
            unknown = set(keys) - self.ledger.known(keys)
        for number, (key, *_) in zip(numbers, replies):
            if key in unknown:
                self._refused(report, number, key)
        report.already += len(replies) - stored - sum(r[0] in unknown for r in replies)
        for number, line_id, result in errors:
            if result.key in unknown:
                self._refused(report, number, result.key)
            else:
                self._error(result, line_id, report)
        if stored == len(replies):
            report.cost += sum(r[6] for r in replies)
        elif stored:  # which ones were stored just now: the store knows
            report.cost += self.ledger.stored_cost([r[0] for r in replies])

    @staticmethod
    def _refused(report: FileReport, number: int, key: str) -> None:
        report.refused += 1
        report.problem(number, f"custom_id {key[:16]!r} is no request of this run (another "
                       "run, or another model)")

    def _reply(self, result: Result) -> Reply:
        model = result.model or self.model
        text = result.text or ""
        tin = result.tokens_in if result.tokens_in is not None else 0
        tout = result.tokens_out if result.tokens_out is not None else len(text) // 4 + 1
        known = self._models.get(model)
        if known is None:
            known = self._models[model] = (repair_text(model)[0], self.prices.lookup(model))
        name, (per_in, per_out) = known
        cost = (tin * per_in + tout * per_out) / 1e6 * BATCH_DISCOUNT
        return (result.key, name, repair_text(text)[0], result.finish_reason, tin, tout, cost)

    def _error(self, result: Result, line_id: str, report: FileReport) -> None:
        reason = result.reason or "batch_error"
        state = self.ledger.fail(result.key, reason, result.detail,
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
                return rest[1:end].decode("utf-8", "replace").replace(" ", "_")
    return hashlib.sha1(raw).hexdigest()
