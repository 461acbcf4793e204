"""Tolerant parsing of marker sections (``[New Instruction] ... [End]``) in oracle replies.

Real oracles wrap markers in markdown (``2. **New Instruction:**``), drop the brackets, forget
``[End]``, repeat markers and echo the template. ``parse_sections`` never raises: every label
gets either its text or the reason it has none.

What a marker is (case-insensitive; "blank" is any whitespace, newlines included):

- bracketed: ``[`` blank* label blank* ``]`` blank* ``:``?
- line marker: a line start, ``[ \\t>]*``, an optional list or heading mark (``1.``, ``2)``,
  ``-`` + blank, ``#`` to ``######``), a decoration (``**``, ``__``, ``*``, ``_``, backtick),
  blank*, the label, blank*, a decoration, blank*, then ``:`` or the end of a line, blank*, a
  decoration.

A section ends at ``[End]`` / ``[/End]`` or at a line holding only ``End`` (decorated or not).

Replies are untrusted: a degenerate or hostile oracle can send megabytes of blanks. Parsing
therefore takes time linear in the reply's length. No pattern can backtrack over a run it has
matched (runs are matched atomically, and no two neighbouring repeats share a character), every
search starts with a literal so that it skips ahead at C speed, and the blank runs a line marker
may span across lines are measured once, by anchored matches on the reversed reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

from .linear import atomic as _atomic

_DECORS = ("**", "__", "*", "_", "`")  # each reads the same reversed
_D = r"(?:\*\*|__|\*|_|`)"


def _hb() -> str:
    return _atomic(r"[^\S\n]*")  # blanks within a line


# a label is followed by ":" or a line end, possibly after blanks and a decoration
_LINE_RIGHT = rf"(?={_hb()}(?:[:\n]|\Z|{_D}{_hb()}(?:[:\n]|\Z)))"


def _after_prefix(word: str, last: str, inner: str) -> str:
    """Look-behinds, to follow ``word``: on its line, what stands before it may be the head of a
    marker (``last``: the characters allowed right before it, ``inner``: before those), as far
    as _LOOK_BACK characters show. They only narrow the candidates; each is checked after."""
    outer = rf"[^\s{inner}]"  # neither a line end nor a character of a marker's head
    return rf"(?<![^\s{last}]{word})" + "".join(
        rf"(?<!{outer}[^\S\n{inner}]{{{k}}}{word})" for k in range(1, _LOOK_BACK + 1))


_LOOK_BACK = 4
# "end" with, up to its line's end, only blanks and a decoration after it (the look-behinds
# follow the literal, so that the search still skips ahead to it at C speed)
_END_WORD = (r"end" + _after_prefix("end", ">*_`", ">*_`")
             + rf"(?={_hb()}(?:{_D}{_hb()})?$)")
# the head of an End line: [ \t>]*, a decoration, blanks (a blank run right after the [ \t>]
# run must start with another kind of blank, so that the two repeats share no character)
_END_LEFT = re.compile(_atomic(r"[ \t>]*") + rf"(?:{_D}{_hb()}|[^\S\n \t]{_hb()})?")
_END_HEAD = re.compile(_atomic(r"[ \t>]*") + _D + "?")
_BLANKS = re.compile(r"\s*")
_GAP = re.compile(r"[ \t>]*")
_DIGITS = re.compile(r"\d*")
_HASHES = re.compile(r"#*")
_STARS = re.compile(r"[*_]*")
_PAIR_TOKENS = re.compile("\0*")
_NA = re.compile(r"^(?:n/?a|none|null|nothing|" + _atomic("-+") + r"|\.\.\.)\.?$", re.IGNORECASE)
# the only characters that re.IGNORECASE matches to an ASCII letter but str.lower() does not
# turn into that one letter
_ODD_CASE = ("\u0130", "\u0131", "\u017f")


@dataclass
class ParseResult:
    fields: dict[str, str | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # label -> why it has no text

    @property
    def ok(self) -> bool:
        return not self.reasons


@dataclass(frozen=True)
class _Patterns:
    bracketed: re.Pattern[str]  # a whole bracketed marker
    line: re.Pattern[str]  # a label a line marker could end with (its start is checked after)
    end_bracketed: re.Pattern[str]
    end_word: re.Pattern[str]


@lru_cache(maxsize=64)
def _patterns(label: str, flags: int) -> _Patterns:
    """``flags`` 0: the patterns for the lower-cased reply; re.IGNORECASE: for the reply itself.

    Right before a line marker's label stands a blank, ">", a decoration, the end of a list
    mark, or nothing; further back on its line only those, digits, "-" and "+".
    """
    first, *rest = [re.escape(w if flags else w.lower()) for w in label.split()]
    words = "".join(_atomic(r"\s+") + w for w in rest)  # after the first word

    def sp() -> str:
        return _atomic(r"\s*")

    return _Patterns(
        bracketed=re.compile(rf"\[{sp()}{first}{words}{sp()}\]\s*:?", flags),
        # a colon right after the label (the usual case) ends the marker after blanks and a
        # decoration; any other ending is worked out by _line_marker_end
        line=re.compile(first + _after_prefix(first, ">*_`.)#", r">*_`.)#+\d\-") + words
                        + rf"(?:(?P<colon>:{sp()}{_D}?)|{_LINE_RIGHT})", flags | re.M),
        end_bracketed=re.compile(rf"\[{sp()}(?:/{sp()})?end{sp()}\]", flags),
        end_word=re.compile(_END_WORD, flags | re.M))


def _haystack(text: str, labels: tuple[str, ...]) -> tuple[str, int]:
    """The text to search and its patterns' flags: the lower-cased reply (much faster to search)
    when that finds exactly what re.IGNORECASE would, else the reply itself."""
    if all(label.isascii() for label in labels) and (
            text.isascii() or not any(c in text for c in _ODD_CASE)):
        return text.lower(), 0
    return text, re.IGNORECASE


def _blank_end(text: str, pos: int) -> int:
    return _BLANKS.match(text, pos).end()


def _decor_len(text: str, pos: int) -> int:
    if text.startswith(("**", "__"), pos):
        return 2
    return 1 if text.startswith(("*", "_", "`"), pos) else 0


class _Reversed:
    """The reply read backwards: index ``i`` here is the character before text position ``n - i``
    (reversed on first use)."""

    def __init__(self, text: str):
        self.n = len(text)
        self.text = text

    @cached_property
    def rev(self) -> str:
        return self.text[::-1]

    def run(self, pattern: re.Pattern[str], i: int) -> int:
        return pattern.match(self.rev, i).end()

    def line_start(self, i: int) -> int | None:
        """Text position L when the characters before ``n - i`` back to a line start are [ \\t>]."""
        q = self.run(_GAP, i)
        return self.n - q if q == self.n or self.rev[q] == "\n" else None

    def numbered(self, i: int, spaced: bool) -> int | None:
        """Line start before a list or heading mark ending at ``n - i`` (``spaced``: blanks follow)."""
        ch = self.rev[i] if i < self.n else ""
        if ch and ch in ".)":
            k = self.run(_DIGITS, i + 1)
            return self.line_start(k) if k > i + 1 else None
        if ch and ch in "-*+":
            return self.line_start(i + 1) if spaced else None
        if ch == "#":
            k = self.run(_HASHES, i)
            return self.line_start(k) if k - i <= 6 else None
        return None


def _line_marker_start(text: str, back: _Reversed, s: int, floor: int) -> int | None:
    """The first line start L >= ``floor`` from which a line marker reaches its label at ``s``
    (the blanks, list mark and decoration before a label may span lines)."""
    if s == 0 or (text[s - 1] == "\n" and not _may_extend(text, s - 2)):
        return s if s >= floor else None
    n, i = back.n, back.n - s
    a = back.run(_BLANKS, i)
    newline = text.find("\n", max(s - (a - i), floor - 1), s) if a > i else -1
    best = newline + 1 if newline != -1 else None
    if a == n:  # only blanks back to the reply's start
        return 0 if floor == 0 else best
    ch = back.rev[a]
    if ch not in ">*_`.)#-+":  # only blanks back to this line's start
        return best
    starts = [best, back.line_start(a), back.numbered(a, a > i)]
    for d in _DECORS:
        if back.rev.startswith(d, a):
            b = a + len(d)
            c = back.run(_BLANKS, b)
            starts += [back.line_start(b), back.numbered(c, c > b)]
    return min((x for x in starts if x is not None and x >= floor), default=None)


def _may_extend(text: str, pos: int) -> bool:
    """Whether a marker's head may reach back past ``pos``: the reply's start, a blank, or a
    character that can end a list mark or a decoration."""
    return pos < 0 or text[pos].isspace() or text[pos] in ">*_`.)#-+"


def _line_marker_end(text: str, e: int) -> int:
    """Where a line marker whose label ends at ``e`` ends (its trailing blanks, ``:`` and
    decorations included), choosing as the marker's greedy definition does."""
    n = len(text)
    a = _blank_end(text, e)
    for d in (*_DECORS, ""):
        if not text.startswith(d, a):
            continue
        b = a + len(d)
        c = _blank_end(text, b) if d else a
        if c < n and text[c] == ":":
            end = _blank_end(text, c + 1)
            return end + _decor_len(text, end)
        if c == n or text.find("\n", b if d else e, c) != -1:
            return c + _decor_len(text, c)
    return a  # unreachable: the search's look-ahead guaranteed one of the cases


def _markers(hay: str, labels: tuple[str, ...], flags: int) -> list[tuple[int, int, str]]:
    """(start, end, label) of every marker, in order; ``hay`` as :func:`_haystack` gives it."""
    found = []
    back = _Reversed(hay)
    for label in labels:
        pats = _patterns(label, flags)
        bracketed = list(pats.bracketed.finditer(hay))
        candidates = list(pats.line.finditer(hay))
        if bracketed and candidates:
            candidates = sorted(bracketed + candidates, key=lambda m: m.start())
        elif bracketed:
            candidates = bracketed
        floor = 0  # a marker starts where the previous one of its label ended, or later
        for m in candidates:
            if m.re is pats.bracketed:
                start, end = m.span()
            else:
                start = _line_marker_start(hay, back, m.start(), floor)
                if start is None:
                    continue
                end = m.end() if m.group("colon") is not None else _line_marker_end(hay, m.end())
            if start < floor:
                continue
            found.append((start, end, label))
            floor = end
    found.sort()
    return found


def _end_of_section(section: str, pats: _Patterns) -> int | None:
    """Where ``[End]`` or an ``End`` line starts in ``section``, or None."""
    bracketed = pats.end_bracketed.search(section)
    if bracketed is not None and bracketed.start() == 0:
        return 0
    for m in pats.end_word.finditer(section):  # at most one per line
        p = m.start()
        if bracketed is not None and bracketed.start() < p:
            break
        line = section.rfind("\n", 0, p) + 1
        if _END_LEFT.fullmatch(section, line, p):
            return _end_line_start(section, line, p)
    return bracketed.start() if bracketed is not None else None


def _end_line_start(section: str, line: int, p: int) -> int:
    """Where an End line starts: when only blanks precede its word, they may begin lines
    earlier, after a line holding just [ \\t>]* and a decoration, which then belongs to it."""
    if line == 0 or section[line:p].strip():
        return line
    head = len(section[:line].rstrip())
    first = section.rfind("\n", 0, head) + 1
    if _END_HEAD.fullmatch(section, first, head):
        return first
    return section.find("\n", head) + 1


def _pairs_prefix(text: str) -> int:
    """Length of the leading run of ``**`` / ``__`` pairs."""
    if not text.startswith(("**", "__")):
        return 0
    run = text[: _STARS.match(text).end()]
    # str.replace pairs from the left, as the run is read
    tokens = run.replace("**", "\0").replace("__", "\0")
    return 2 * _PAIR_TOKENS.match(tokens).end()


def _strip_pairs(chunk: str) -> str:
    """Drop the leading and the trailing runs of ``**`` / ``__`` pairs."""
    i = _pairs_prefix(chunk)
    end = len(chunk) - _pairs_prefix(chunk[::-1])
    if end < i:  # the runs overlap: the trailing one starts after the leading one
        end = i + (len(chunk) - i) % 2
    return chunk[i:end] if end < len(chunk) else chunk[i:]


def _is_rule(line: str) -> bool:
    """A horizontal rule: three or more of one of - * _, blanks (space, tab) around."""
    core = line.strip(" \t")
    return len(core) >= 3 and core[0] in "-*_" and not core.strip(core[0])


def _clean(chunk: str) -> str:
    chunk = _strip_pairs(chunk.strip()).strip()
    last = chunk.rfind("\n")
    if last != -1 and _is_rule(chunk[last + 1:]):
        chunk = chunk[:last].strip()
    if chunk.startswith('"') and chunk.endswith('"') and chunk.count('"') == 2:
        chunk = chunk[1:-1].strip()
    return chunk


def _problem(chunk: str, echo_phrases: tuple[str, ...]) -> str | None:
    if not chunk:
        return "empty"
    if _NA.match(chunk):
        return "not_applicable"
    low = chunk.lower()
    if any(p.lower() in low for p in echo_phrases) and len(chunk) < 4 * max(
            len(p) for p in echo_phrases):
        return "template_echo"
    return None


def _section_text(text: str, hay: str, start: int, stop: int, pats: _Patterns) -> str:
    """The cleaned text of one section, cut at its End marker."""
    section = hay[start:stop]
    if not section or section.isspace():
        return ""
    cut = _end_of_section(section, pats)
    return _clean(text[start:stop] if cut is None else text[start:start + cut])


def _sections(markers: list[tuple[int, int, str]], length: int) -> dict[str, list[tuple[int, int]]]:
    """Each label's sections in order: from the end of its marker to the next marker's start."""
    sections: dict[str, list[tuple[int, int]]] = {}
    stops = [start for start, _, _ in markers[1:]] + [length]
    for (_, end, label), stop in zip(markers, stops):
        sections.setdefault(label, []).append((end, stop))
    return sections


def parse_sections(text: str | None, labels: tuple[str, ...] | list[str],
                   echo_phrases: tuple[str, ...] | list[str] = ()) -> ParseResult:
    """Extract each label's section; the first usable occurrence wins."""
    labels, echo_phrases = tuple(labels), tuple(echo_phrases)
    result = ParseResult()
    if not text or not text.strip():
        for label in labels:
            result.fields[label] = None
            result.reasons[label] = "empty_reply"
        return result
    hay, flags = _haystack(text, labels)
    sections = _sections(_markers(hay, labels, flags), len(text))
    for label in labels:
        pats = _patterns(label, flags)
        problems = []
        value = None
        for end, stop in sections.get(label, ()):
            chunk = _section_text(text, hay, end, stop, pats)
            problem = _problem(chunk, echo_phrases)
            if problem is None:
                value = chunk
                break
            problems.append(problem)
        result.fields[label] = value
        if value is None:
            # an empty section right before a repeated marker is not worth reporting
            real = [p for p in problems if p != "empty"]
            result.reasons[label] = real[-1] if real else ("empty" if problems else "missing")
    return result
