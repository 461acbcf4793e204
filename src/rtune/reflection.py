"""The Reflection 70B answer format: ``<thinking>`` / ``<reflection>`` / ``<output>``.

A model in this format reasons inside ``<thinking>``, corrects itself inside ``<reflection>``
(usually nested in the thinking) and gives its final answer inside ``<output>``. Evaluators
score only the ``<output>`` part, falling back to the whole text (flagged) when there is none.

This module is the format alone, with no I/O: the tolerant parser (:func:`parse_reflection`,
:func:`extract_output`), the canonical form of a parsed reply, and an optional helper that adds
the tags as special tokens before training. The recycling stage that asks an oracle for this
format is :mod:`rtune.reflection_stage`; answering questions in it is :mod:`rtune.reflect`.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .linear import atomic, fence_spans

TAGS = ("thinking", "reflection", "output")
SPECIAL_TOKENS = tuple(f"<{t}>" for t in TAGS) + tuple(f"</{t}>" for t in TAGS)

# ---------------------------------------------------------------- the parser

# blank runs matched atomically: a run of blanks after "<" cannot cost more than its length
_TAG = re.compile("<" + atomic(r"\s*") + "(?:(?P<slash>/)" + atomic(r"\s*") + ")?"
                  "(?P<name>thinking|reflection|output)" + atomic(r"\s*") + ">", re.IGNORECASE)
# fenced blocks (``` or ~~~ at a line start, up to the same fence at a line start; models often
# put a closing tag right after the closing fence: "```</output>") come from fence_spans
_INLINE_CODE = re.compile("`" + atomic(r"[^`\n]+") + "`")


@dataclass
class ReflectionParse:
    """What a reply in the reflection format holds.

    ``output`` is the final answer: the last non-empty ``<output>`` block, or (``flagged``) the
    text outside the thinking, or the whole text. ``reason`` says what was repaired or why the
    output is a fallback; None for a clean reply.
    """

    output: str
    thinking: str | None = None
    reflections: list[str] = field(default_factory=list)
    flagged: bool = False
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return not self.flagged


@dataclass
class _Block:
    name: str
    start: int  # first character of the content
    end: int | None = None  # one past the last character of the content
    closed: bool = False


class _Spans:
    """Sorted, non-overlapping character ranges with a fast membership test."""

    def __init__(self, spans: list[tuple[int, int]]):
        self.spans = sorted(spans)
        self.starts = [a for a, _ in self.spans]

    def __contains__(self, pos: int) -> bool:
        i = bisect_right(self.starts, pos) - 1
        return i >= 0 and pos < self.spans[i][1]


def _code_spans(text: str, *, fences: bool = True) -> _Spans:
    fenced = _Spans(fence_spans(text) if fences else [])
    inline = [m.span() for m in _INLINE_CODE.finditer(text) if m.start() not in fenced]
    return _Spans(fenced.spans + inline)


def _tags(text: str, *, fences: bool) -> list[re.Match[str]]:
    """Tag matches outside inline code, and outside fenced blocks when ``fences``."""
    tags = list(_TAG.finditer(text))
    if not tags:
        return tags
    code = _code_spans(text, fences=fences)
    return [m for m in tags if m.start() not in code] if code.spans else tags


def _blocks(text: str, tags: list[re.Match[str]]) -> tuple[list[_Block], list[str]]:
    """Pair opening and closing tags with a stack, repairing what models get wrong."""
    blocks: list[_Block] = []
    stack: list[_Block] = []
    notes: list[str] = []
    for m in tags:
        closing, name = bool(m.group("slash")), m.group("name").lower()
        if not closing:
            # a tag opened again before it was closed, or <output> inside an open <thinking>:
            # close the open ones first (models forget closing tags far more often than they
            # nest a tag in itself)
            names = [b.name for b in stack]
            cut = names.index(name) if name in names else None
            if name == "output" and cut is None and stack:
                cut = 0
            if cut is not None:
                for b in reversed(stack[cut:]):
                    b.end = m.start()
                    notes.append(f"unclosed <{b.name}>")
                del stack[cut:]
            block = _Block(name, m.end())
            blocks.append(block)
            stack.append(block)
            continue
        names = [b.name for b in stack]
        if name not in names:
            notes.append(f"stray </{name}>")
            continue
        cut = len(names) - 1 - names[::-1].index(name)
        for b in reversed(stack[cut + 1:]):
            b.end = m.start()
            notes.append(f"unclosed <{b.name}>")
        stack[cut].end, stack[cut].closed = m.start(), True
        del stack[cut:]
    for b in reversed(stack):
        b.end = len(text)
        notes.append(f"unclosed <{b.name}>")
    return blocks, notes


def _strip_tags(text: str) -> str:
    return _TAG.sub("", text).strip()


def _outside(text: str, blocks: list[_Block]) -> str:
    """The text outside every thinking/reflection block, tags removed."""
    keep, pos = [], 0
    for b in sorted((b for b in blocks if b.name != "output"), key=lambda b: b.start):
        opening = text.rfind("<", 0, b.start)
        if opening >= pos:
            keep.append(text[pos:opening])
        end = b.end if b.end is not None else len(text)
        if b.closed:
            close = text.find(">", end)
            end = close + 1 if close != -1 else len(text)
        pos = max(pos, end)
    keep.append(text[pos:])
    return _strip_tags("".join(keep))


def parse_reflection(text: str | None) -> ReflectionParse:
    """Split a reply into thinking, reflections and output; never raises.

    Tolerates missing closing tags, several reflection (or output) blocks, tags written inside
    code fences or inline code (ignored while real tags exist outside code; used when the whole
    reply was fenced) and replies with no tags at all (the whole text, flagged).
    """
    if not isinstance(text, str) or not text.strip():
        return ReflectionParse(output="", flagged=True, reason="empty reply")
    notes: list[str] = []
    tags = _tags(text, fences=True)
    if not tags:  # the model fenced its whole reply
        tags = _tags(text, fences=False)
        if tags:
            notes.append("tags only inside a code fence")
    if not tags:
        return ReflectionParse(output=text.strip(), flagged=True, reason="no tags")
    blocks, repairs = _blocks(text, tags)
    notes.extend(dict.fromkeys(repairs))  # de-duplicated, in order

    tag_starts = [m.start() for m in tags]

    def content(b: _Block, *, keep_tags: bool = False) -> str:
        """The block's text without the real tags inside it (tags in code stay)."""
        end = b.end if b.end is not None else len(text)
        if keep_tags:
            return text[b.start:end].strip()
        parts, pos = [], b.start
        i = bisect_left(tag_starts, b.start)
        while i < len(tags) and tags[i].end() <= end:
            parts.append(text[pos:tags[i].start()])
            pos = tags[i].end()
            i += 1
        parts.append(text[pos:end])
        return "".join(parts).strip()

    thinking = [t for b in blocks if b.name == "thinking" and (t := content(b, keep_tags=True))]
    reflections = [r for b in blocks if b.name == "reflection" and (r := content(b))]
    outputs = [content(b) for b in blocks if b.name == "output"]
    found = [o for o in outputs if o]
    if len(outputs) > 1:
        notes.append(f"{len(outputs)} <output> blocks, used the last non-empty one")
    flagged = False
    if found:
        output = found[-1]
    else:
        flagged = True
        rest = _outside(text, blocks)
        if rest:
            output = rest
            notes.append("empty <output>" if outputs else "no <output>")
            notes[-1] += ": used the text outside <thinking>"
        else:
            output = text.strip()
            notes.append(("empty <output>" if outputs else "no <output>") + ": whole text")
    return ReflectionParse(output=output, thinking="\n\n".join(thinking) or None,
                           reflections=reflections, flagged=flagged,
                           reason="; ".join(notes) or None)


def extract_output(text: str | None) -> tuple[str, bool]:
    """The final answer of a reply (for ``--output-only``) and whether it is a fallback."""
    parsed = parse_reflection(text)
    return parsed.output, parsed.flagged


def format_reflection(thinking: str, output: str, reflections: Sequence[str] = ()) -> str:
    """The canonical tagged text: reflections nested at the end of the thinking."""
    inner = thinking.strip()
    for r in reflections:
        inner += f"\n<reflection>\n{r.strip()}\n</reflection>"
    return f"<thinking>\n{inner.strip()}\n</thinking>\n<output>\n{output.strip()}\n</output>"


def canonical_reflection(parsed: ReflectionParse) -> str:
    """Rewrite a parsed (possibly repaired) reply in the canonical tagged layout."""
    inner, nested = _balanced_thinking(parsed.thinking or "")
    missing = list(parsed.reflections)
    for body in nested:
        if body in missing:
            missing.remove(body)
    return format_reflection(inner, parsed.output, missing)


def _balanced_thinking(thinking: str) -> tuple[str, list[str]]:
    """The thinking with its reflection tags re-balanced (closed where the model forgot), and
    the reflections it holds."""
    blocks, _ = _blocks(thinking, _tags(thinking, fences=True))
    pieces, bodies, pos = [], [], 0
    for b in (b for b in blocks if b.name == "reflection"):
        opening = thinking.rfind("<", 0, b.start)
        if opening < pos:
            continue
        end = b.end if b.end is not None else len(thinking)
        body = _TAG.sub("", thinking[b.start:end]).strip()
        pieces.append(_TAG.sub("", thinking[pos:opening]).strip())
        if body:
            bodies.append(body)
            pieces.append(f"<reflection>\n{body}\n</reflection>")
        pos = end
        if b.closed:
            close = thinking.find(">", end)
            pos = close + 1 if close != -1 else len(thinking)
    pieces.append(_TAG.sub("", thinking[pos:]).strip())
    return "\n".join(p for p in pieces if p), bodies


def check_reflection_reply(text: str | None) -> tuple[ReflectionParse, str | None]:
    """Parse an oracle rewrite; the second item is why it cannot be used (None when usable)."""
    parsed = parse_reflection(text)
    if parsed.flagged:
        return parsed, parsed.reason or "no <output>"
    if not parsed.thinking:
        return parsed, "no <thinking>"
    return parsed, None


# ---------------------------------------------------------------- special tokens


def add_reflection_special_tokens(tokenizer: Any, model: Any = None, *,
                                  special: bool = False) -> int:
    """Give each of the six tags one token id and resize ``model``'s embeddings to match.

    Off by default in training. By default the tags become added (not special) tokens: atomic,
    yet kept by ``decode(skip_special_tokens=True)``; ``special=True`` registers them as special
    tokens, which such a decode strips, so the parser would then find no tags. New rows are
    drawn around the mean of the old embeddings (``mean_resizing``). Returns how many tokens were new.
    """
    added = tokenizer.add_tokens(list(SPECIAL_TOKENS), special_tokens=special)
    if model is not None and added:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return added
