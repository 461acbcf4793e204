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

from .batch_ledger import Ledger
from .oracle.batch_files import BadLine, Result, parse_result
from .oracle.pricing import BATCH_DISCOUNT, Prices
from .text import repair_text

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

    def __init__(self, ledger: Ledger, prices: Prices, *, model: str = "", retries: int = 2,
                 resubmit: bool = True, chunk: int = CHUNK):
        self.ledger = ledger
        self.prices = prices
        self.model = model  # the run's model: for a reply that names none
        self._prices: dict[str, tuple[float, float]] = {}
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
        self.ledger.settle_done()
        return report

    def _chunk(self, lines: list[tuple[int, bytes]], report: FileReport) -> None:
        replies: list[tuple[str, str, str, str | None, int, int, float]] = []
        numbers: list[int] = []
        errors: list[tuple[int, bytes, Result]] = []
        for number, raw in lines:
            report.lines += 1
            try:
                result = parse_result(raw)
            except BadLine as e:
                report.bad += 1
                report.problem(number, str(e))
                continue
            if result.text is None:
                errors.append((number, raw, result))
            else:
                replies.append(self._reply(result))
                numbers.append(number)
        with self.ledger.transaction():
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
            for number, raw, result in errors:
                if result.key in unknown:
                    self._refused(report, number, result.key)
                else:
                    self._error(result, raw, report)
            if stored == len(replies):
                report.cost += sum(r[6] for r in replies)
            elif stored:  # which ones were stored just now: the store knows
                report.cost += self.ledger.stored_cost([r[0] for r in replies])

    @staticmethod
    def _refused(report: FileReport, number: int, key: str) -> None:
        report.refused += 1
        report.problem(number, f"custom_id {key[:16]!r} is no request of this run (another "
                       "run, or another model)")

    def _reply(self, result: Result) -> tuple[str, str, str, str | None, int, int, float]:
        model = result.model or self.model
        text = result.text or ""
        tin = result.tokens_in if result.tokens_in is not None else 0
        tout = result.tokens_out if result.tokens_out is not None else len(text) // 4 + 1
        price = self._prices.get(model)
        if price is None:
            price = self._prices[model] = self.prices.lookup(model)
        cost = (tin * price[0] + tout * price[1]) / 1e6 * BATCH_DISCOUNT
        return (result.key, repair_text(model)[0], repair_text(text)[0], result.finish_reason,
                tin, tout, cost)

    def _error(self, result: Result, raw: bytes, report: FileReport) -> None:
        reason = result.reason or "batch_error"
        state = self.ledger.fail(result.key, reason, result.detail,
                                 retry=self.resubmit and result.transient,
                                 retries=self.retries, line_id=_line_id(raw))
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
