"""Finding a text that repeats itself, as its tokens come.

A small model decoding greedily often never ends a text: it writes one sentence over and over
until its token budget runs out. :class:`LoopWatch` sees that as it happens: the text (blanks
collapsed, so a copy that wraps its lines differently still counts) ends with at least
``span`` characters, and at least one whole period, that repeat verbatim the characters one
period before them, the period holding a letter or digit (a table's ``-----`` rule is no
loop); or it has run on for ``span`` blank characters. Guided local decoding (:mod:`rtune.oracle.guided_local`) then ends the text
as if the model had ended it, and drops the repeated copies (:meth:`LoopWatch.keep`).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable

_BLANKS = re.compile(r"\s+")


class LoopWatch:
    """One row's text since the watch (re)started; ``decode`` gives a token's text."""

    def __init__(self, span: int, decode: Callable[[int], str], longest: int = 2000):
        self.span = span
        self.decode = decode
        self.longest = longest  # the longest period looked for, in characters
        self.restart()

    def restart(self) -> None:
        self.text = ""
        self.ends: list[int] = []  # len(self.text) after each token
        self.period = 0
        self.blanks = 0  # blank characters the text ends with, as written

    def push(self, token: int) -> bool:
        """Take the next token; True when the text now repeats itself (or has run on for
        ``span`` blank characters)."""
        raw = self.decode(token)
        body = raw.rstrip()
        self.blanks = self.blanks + len(raw) if not body else len(raw) - len(body)
        piece = _BLANKS.sub(" ", raw)
        if piece.startswith(" ") and self.text.endswith(" "):
            piece = piece[1:]
        self.text += piece
        self.ends.append(len(self.text))
        self.period = 0 if self.blanks >= self.span else self._period()
        return self.period > 0 or self.blanks >= self.span

    def _period(self) -> int:
        """The shortest period the text's end repeats with, or 0."""
        s, n, span = self.text, len(self.text), self.span
        if n <= span:
            return 0
        tail, low, high = s[n - span:], max(0, n - span - self.longest), n - 1
        while (j := s.rfind(tail, low, high)) >= 0:  # nearest earlier occurrence first
            period = n - span - j
            size = max(period, span)
            if (size + period <= n and s[n - size:] == s[n - size - period:n - period]
                    and any(c.isalnum() for c in s[n - period:])):  # not a ---- rule
                return period
            high = j + span - 1
        return 0

    def keep(self) -> int:
        """How many of the watched tokens to keep: the text up to where the repetition began
        (one copy of the period), on to the next sentence end (else word end) within a period
        when there is one (the copy may begin mid-sentence: the period is found, not its first
        word)."""
        s, n, period = self.text, len(self.text), self.period
        if not period:  # a run of blanks: keep what came before it
            cut = len(s.rstrip())
            return 0 if cut <= 0 else min(len(self.ends), bisect.bisect_left(self.ends, cut) + 1)
        run = max(period, self.span)
        while run + period < n and s[n - run - 1] == s[n - run - 1 - period]:
            run += 1
        cut = n - run
        if s[cut - 1:cut] == " ":
            cut -= 1
        start = max(0, cut - 1)  # the copy kept may end just before the repetition began
        ends = [i for i in (s.find(mark, start, start + period) for mark in ".!?") if i >= 0]
        if ends:
            cut = min(ends) + 1
        elif (blank := s.find(" ", cut, cut + period)) >= 0:  # at least end on a whole word
            cut = blank
        return 0 if cut <= 0 else min(len(self.ends), bisect.bisect_left(self.ends, cut) + 1)
