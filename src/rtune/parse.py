"""Tolerant parsing of marker sections (``[New Instruction] ... [End]``) in oracle replies.

Real oracles wrap markers in markdown (``2. **New Instruction:**``), drop the brackets, forget
``[End]``, repeat markers and echo the template. ``parse_sections`` never raises: every label
gets either its text or the reason it has none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_DECOR = r"(?:\*\*|__|\*|_|`)?"
_END = re.compile(r"\[\s*/?\s*end\s*\]|^[ \t>]*" + _DECOR + r"\s*end\s*" + _DECOR + r"\s*$",
                  re.IGNORECASE | re.MULTILINE)
_NA = re.compile(r"^(?:n/?a|none|null|nothing|-+|\.\.\.)\.?$", re.IGNORECASE)


@dataclass
class ParseResult:
    fields: dict[str, str | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # label -> why it has no text

    @property
    def ok(self) -> bool:
        return not self.reasons


def _label_pattern(label: str) -> str:
    words = r"\s+".join(re.escape(w) for w in label.split())
    bracketed = r"\[\s*" + words + r"\s*\]\s*:?"
    line_start = (r"(?:^|(?<=\n))[ \t>]*(?:\d+[.)]\s*|[-*+]\s+|#{1,6}\s*)?" + _DECOR + r"\s*"
                  + words + r"\s*" + _DECOR + r"\s*(?::|(?=\s*$))\s*" + _DECOR)
    return f"(?:{bracketed}|{line_start})"


def _markers(text: str, labels: tuple[str, ...]) -> list[tuple[int, int, str]]:
    found = []
    for label in labels:
        for m in re.finditer(_label_pattern(label), text, re.IGNORECASE | re.MULTILINE):
            found.append((m.start(), m.end(), label))
    found.sort()
    return found


def _clean(chunk: str) -> str:
    chunk = chunk.strip()
    chunk = re.sub(r"^(?:\*\*|__)+|(?:\*\*|__)+$", "", chunk).strip()
    chunk = re.sub(r"\n[ \t]*(?:-{3,}|\*{3,}|_{3,})[ \t]*$", "", chunk).strip()
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
    markers = _markers(text, labels)
    for label in labels:
        problems = []
        value = None
        for i, (_, end, lab) in enumerate(markers):
            if lab != label:
                continue
            stop = markers[i + 1][0] if i + 1 < len(markers) else len(text)
            section = text[end:stop]
            m = _END.search(section)
            chunk = _clean(section[: m.start()] if m else section)
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
