"""Building blocks for parsing untrusted text in time linear in its length.

Oracle and judge replies can be degenerate or hostile (megabytes of blanks, runs of backticks).
A backtracking regex whose repeats can trade characters with each other, or that gives back a
long run character by character after a failure, costs quadratic or cubic time on such text.
The parsers here therefore match every unbounded run atomically (:func:`atomic`) and keep
neighbouring repeats over disjoint character sets, and fenced code blocks are found by
:func:`fence_spans` instead of a lazy ``.*?`` search with a back-reference.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
from bisect import bisect_right
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_names = itertools.count()


def atomic(body: str) -> str:
    """A pattern matching ``body`` once, greedily, and never giving any of it back.

    Python 3.11 has atomic groups. On 3.10 a look-ahead stands in (look-arounds are atomic),
    and a named back-reference then consumes exactly what it matched (compared
    case-sensitively: it is the same text, and that comparison is the cheaper one).
    """
    if sys.version_info >= (3, 11):
        return f"(?>{body})"
    name = f"_atomic{next(_names)}"
    return f"(?=(?P<{name}>{body}))(?-i:(?P={name}))"


# Longer replies are parsed in a worker thread. Ordinary replies cost tens of nanoseconds per
# character and dense runs of markers or tags up to about two microseconds (a loaded 2-core
# VM), so a reply below this holds the event loop for tens of milliseconds at worst; replies
# within a 2048-token answer budget stay below it and skip the thread's cost.
OFF_LOOP_CHARS = 16_384


async def off_loop(parse: Callable[..., T], text: str | None, *args: Any) -> T:
    """``parse(text, *args)``, run in a worker thread when ``text`` is long.

    The thread still shares the interpreter, but the event loop gets its turn every few
    milliseconds, so one long reply cannot hold up every other call in flight."""
    if text is None or len(text) < OFF_LOOP_CHARS:
        return parse(text, *args)
    return await asyncio.to_thread(parse, text, *args)


_LOOK_BACK = 4


def _fence_run(char: str) -> re.Pattern[str]:
    """Runs of three or more ``char`` that can start a line after spaces and tabs.

    The pattern starts with its literal (so the search skips ahead at C speed); look-behinds
    after it reject a run with something else before it on its line, as far as _LOOK_BACK
    characters show (:func:`_fence_lines` checks the rest). Groups: ``after``, the next
    character if it is a backtick or a tilde; ``newline``, set when a line end follows."""
    lit = re.escape(char * 3)
    behind = "".join(rf"(?<![^\n \t][ \t]{{{k}}}{lit})" for k in range(_LOOK_BACK + 1))
    rest = atomic(r"[^\n]*")
    return re.compile(rf"{lit}{behind}{re.escape(char)}*(?P<after>[`~]?)"
                      rf"(?:(?={rest}(?P<newline>\n)))?")


_FENCE_RUNS = (_fence_run("`"), _fence_run("~"))
_INDENT = re.compile(r"[ \t]*")


# (line start, end of its fence run, fence character, run length, a line end follows so a
# block can open here, neither ` nor ~ follows the run so a block can close here)
_FenceLine = tuple[int, int, str, int, bool, bool]


def _fence_lines(text: str) -> list[_FenceLine]:
    """The lines that start, after spaces and tabs, with three or more backticks or tildes."""
    lines = []
    for pattern in _FENCE_RUNS:
        for m in pattern.finditer(text):
            s, e = m.start(), m.start("after")
            start = text.rfind("\n", max(0, s - _LOOK_BACK - 1), s) + 1
            if start == 0 and s > _LOOK_BACK:  # blanks beyond the look-behinds' reach
                start = text.rfind("\n", 0, s) + 1
                if _INDENT.match(text, start).end() != s:
                    continue
            lines.append((start, e, text[s], e - s, m.group("newline") is not None,
                          not m.group("after")))
    lines.sort()
    return lines


def fence_spans(text: str) -> list[tuple[int, int]]:
    """Spans of the fenced code blocks: a line opening with ``` or ~~~ (three or more, after
    spaces and tabs) up to the first later line that starts with exactly as many of the same
    character, not followed by another backtick or tilde. An opening run that no later line
    closes may be read as a shorter one: the longest that some later line closes.
    The first span of each search wins; the search goes on after the closing run.
    """
    lines = _fence_lines(text)
    same: list[int | None] = [None] * len(lines)  # the nearest later line closing at full length
    last: dict[tuple[str, int], int] = {}
    for i in range(len(lines) - 1, -1, -1):
        _, _, char, length, _, closes = lines[i]
        same[i] = last.get((char, length))
        if closes:
            last[(char, length)] = i
    spans = []
    shorter: _Closers | None = None
    i = 0
    while i < len(lines):
        start, _, char, length, opens, _ = lines[i]
        close = same[i] if opens else None
        if opens and close is None and length > 3:
            shorter = shorter or _Closers(lines)
            close = shorter.find(i, char, length - 1)
        if close is None:
            i += 1
            continue
        spans.append((start, lines[close][1]))
        i = close + 1
    return spans


class _Closers:
    """For each fence character, the lines that close a block, by run length."""

    def __init__(self, lines: list[_FenceLine]):
        self.at: dict[tuple[str, int], list[int]] = {}
        for i, (_, _, char, length, _, closes) in enumerate(lines):
            if closes:
                self.at.setdefault((char, length), []).append(i)
        self.lengths = {c: sorted(k for ch, k in self.at if ch == c) for c in "`~"}

    def find(self, index: int, char: str, longest: int) -> int | None:
        """The line closing a run read as the longest length <= ``longest`` that some line
        after ``index`` closes, and the nearest such line. At most ``longest`` lengths are
        tried, so the work is bounded by the run's own length."""
        lengths = self.lengths[char]
        for j in range(bisect_right(lengths, longest) - 1, -1, -1):
            at = self.at[(char, lengths[j])]
            pos = bisect_right(at, index)
            if pos < len(at):
                return at[pos]
        return None
