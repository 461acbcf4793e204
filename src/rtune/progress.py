"""Live progress for long work: records done, rate, ETA, tokens and cost."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


def rate_text(per_second: float) -> str:
    """Records per second, or per minute / hour when slower (a local CPU oracle)."""
    if per_second >= 0.1 or per_second <= 0:
        return f"{per_second:.2f} rec/s"
    if per_second * 60 >= 0.1:
        return f"{per_second * 60:.2f} rec/min"
    return f"{per_second * 3600:.2f} rec/h"


def duration_text(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(rate_text(speed) if speed else "-- rec/s", style="cyan")


class RunProgress:
    """A rich progress bar on a terminal; a plain line every ``every`` seconds otherwise."""

    def __init__(self, total: int | None, *, enabled: bool = True, label: str = "records",
                 every: float = 15.0, console: Console | None = None):
        self.total = total
        self.enabled = enabled
        self.label = label
        self.every = every
        self.done = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.cost = 0.0
        self.calls = 0
        self.console = console or Console(file=sys.stderr)
        self._start = time.monotonic()
        self._last_line = self._start
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> RunProgress:
        self._start = time.monotonic()
        if self.enabled and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TaskProgressColumn(), _RateColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                TextColumn("{task.fields[usage]}"), console=self.console, transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=self.total, usage="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._refresh()
            self._progress.__exit__(None, None, None)
        elif self.enabled:
            self.console.print(self.line())

    def usage(self) -> str:
        return (f"{self.calls} calls, {self.tokens_in:,} tok in / {self.tokens_out:,} out, "
                f"${self.cost:.4f}")

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self.done / elapsed
        total = f"/{self.total}" if self.total is not None else ""
        eta = ""
        if self.total and rate > 0:
            eta = f", ETA {duration_text((self.total - self.done) / rate)}"
        return (f"{self.label}: {self.done}{total} records, {rate_text(rate)}{eta}, "
                f"{self.usage()}")

    def add_call(self, result) -> None:
        self.calls += 1
        self.tokens_in += result.tokens_in
        self.tokens_out += result.tokens_out
        self.cost += result.extra.get("cost", 0.0)
        self._refresh()

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._refresh()

    def _refresh(self) -> None:
        if not self.enabled:
            return
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=self.done, usage=self.usage())
            return
        now = time.monotonic()
        if now - self._last_line >= self.every:
            self._last_line = now
            self.console.print(self.line())
