"""Guided output: the shape of each stage's reply, declared once.

A :class:`Shape` is a sequence of elements: free :class:`Text` (a critique, a marked part, an
explanation), fixed :class:`Mark` s (the markers and tags), :class:`Gap` s (blanks only),
:class:`Score` s (an integer 0-10) and :class:`Repeat` s. :mod:`rtune.guided_forms` turns a
shape into what each backend takes: a regular expression (vLLM / SGLang), a GBNF grammar
(llama.cpp server, vLLM's grammar field), a JSON schema (OpenAI structured outputs) and the
llguidance grammar of local constrained decoding. A reply written as JSON is mapped back into
the marked text (:func:`from_json`) before the tolerant parser reads it.

The guided form asks for what the unguided prompt asks for: the critique first, as free text;
each part free text inside its markers; the judge's two scores alone on the first line, then
its explanation; the Reflection 70B tags. No element has a length limit, so a reply can still
be cut by max tokens (finish reason ``length``), and is then flagged as cut. A text may not
hold what the tolerant parser would read as a marker, an ``[End]``, a tag, or (in a part) a
placeholder or "N/A", so that a complete guided reply parses to exactly its declared parts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .model_spec import is_url

MODES = ("auto", "regex", "json", "grammar", "off")
NAMESPACE = "guided"  # run-store items: each guided call's provenance, by the call's key


def check_guided(mode: str | bool | None) -> str | None:
    """``mode`` when it is a ``--guided`` mode (or None), else a ConfigError. YAML reads a
    recipe's ``guided: off`` as false and ``on`` as true: they mean off and auto."""
    if isinstance(mode, bool):
        return "auto" if mode else "off"
    if mode is not None and mode not in MODES:
        raise ConfigError(f"--guided {mode!r}: choose from {', '.join(MODES)}")
    return mode


def guided_default(mode: str | None, spec: str) -> str:
    """``mode``, or its default for the model ``spec``: auto for a local model (a grammar
    costs nothing there), off for an endpoint (a guided request is another call, paid again,
    and servers differ in what they take: opt in)."""
    if mode is not None:
        return mode
    return "off" if is_url(spec) else "auto"


@dataclass(frozen=True)
class Text:
    """Free text. ``role`` says what it may not hold: ``critique`` (no marker), ``part`` (no
    marker, End, placeholder or N/A), ``free`` (anything), ``reasoning`` (no tag, no code
    fence line), ``answer`` (no tag). ``required``: holds a non-blank character."""

    name: str
    role: str
    required: bool = True


@dataclass(frozen=True)
class Mark:
    """A fixed text. ``canon``: how it is written around JSON values (default: ``text``)."""

    text: str
    canon: str | None = None


@dataclass(frozen=True)
class Gap:
    """Blanks only; ``canon`` is written in their place when rendering from JSON."""

    canon: str = ""


@dataclass(frozen=True)
class Score:
    """An integer from 0 to 10."""

    name: str


@dataclass(frozen=True)
class Repeat:
    """``items`` at least ``min`` times; in JSON an array of objects named ``name``."""

    name: str
    items: tuple[Element, ...]
    min: int = 0


Element = Text | Mark | Gap | Score | Repeat


@dataclass(frozen=True)
class Shape:
    """A reply's declared shape. ``labels``: the marker labels (marked shapes); ``echo``:
    placeholder phrases a part may not hold; ``tags``: the tags a text may not hold."""

    name: str
    items: tuple[Element, ...]
    labels: tuple[str, ...] = ()
    echo: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        blob = repr((self.items, self.labels, self.echo, self.tags)).encode()
        return f"{self.name}@{hashlib.sha256(blob).hexdigest()[:10]}"

    def marks(self) -> list[str]:
        """The fixed texts a template must name, each once, blanks stripped."""
        out: list[str] = []
        for item in _walk(self.items):
            if isinstance(item, Mark) and item.text.strip() and item.text.strip() not in out:
                out.append(item.text.strip())
        return out


@dataclass(frozen=True)
class GuidedSpec:
    """What a request asks for: a shape and the ``--guided`` mode (not ``off``).
    ``loop_guard``: local decoding ends a text that repeats itself for this many characters
    (0: never; endpoints generate on the server, where rtune cannot watch the tokens)."""

    shape: Shape
    mode: str = "auto"
    loop_guard: int = 0

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"shape": self.shape.tag, "mode": self.mode}
        if self.loop_guard:
            out["loop_guard"] = self.loop_guard
        return out


def guided_spec(shape: Shape, mode: str, spec: str, loop_guard: int) -> GuidedSpec | None:
    """The request's guided spec for the ``--guided`` ``mode`` in force (None when off) with a
    model ``spec``; the loop guard applies to local models only."""
    if mode == "off":
        return None
    return GuidedSpec(shape, mode, 0 if is_url(spec) else loop_guard)


def _walk(items: tuple[Element, ...]):
    for item in items:
        if isinstance(item, Repeat):
            yield from _walk(item.items)
        else:
            yield item


# ---------------------------------------------------------------- the stages' shapes


def _slug(label: str) -> str:
    return "_".join(label.lower().split())


def marked(name: str, labels: tuple[str, ...], *, critique: bool,
           echo: tuple[str, ...] = ()) -> Shape:
    """A critique (when asked for), then each label's part between ``[Label]`` and ``[End]``,
    blanks only between and after the parts."""
    items: list[Element] = [Text("critique", "critique")] if critique else []
    for i, label in enumerate(labels):
        if i:
            items.append(Gap("\n"))
        lead = "\n\n" if critique and not i else ""
        items += [Mark(f"[{label}]", f"{lead}[{label}] "), Text(_slug(label), "part"),
                  Mark("[End]", " [End]")]
    items.append(Gap())
    return Shape(name, tuple(items), labels=labels, echo=tuple(echo))


JUDGE = Shape("judge", (Score("score_1"), Mark(" "), Score("score_2"), Mark("\n"),
                        Text("explanation", "free")))

REFLECTION_TAGS = ("thinking", "reflection", "output")


def reflection(min_reflections: int = 1) -> Shape:
    """``<thinking>`` with ``min_reflections`` or more ``<reflection>`` blocks nested in it,
    then ``<output>``; each tag on its own line."""
    again = Repeat("reflections", (Mark("\n<reflection>\n"), Text("reflection", "reasoning"),
                                   Mark("\n</reflection>", "\n</reflection>\n"),
                                   Text("continued", "reasoning", required=False)),
                   min=min_reflections)
    return Shape("reflection" if min_reflections else "reflection-answer", (
        Mark("<thinking>\n"), Text("thinking", "reasoning"), again,
        Mark("\n</thinking>\n<output>\n"), Text("output", "answer"), Mark("\n</output>"),
        Gap()), tags=REFLECTION_TAGS)


STAGE_LABELS = {"compress": ("Merged Instruction",),
                "instruction": ("New Instruction", "New Answer"),
                "response": ("Better Answer",), "both": ("Better Answer",)}


def stage_shape(stage: str, echo: tuple[str, ...] = ()) -> Shape:
    """The declared shape of a recycling stage's reply (``reflection-format`` included)."""
    if stage == "reflection-format":
        return reflection(1)
    if stage not in STAGE_LABELS:
        raise ConfigError(f"no declared reply shape for stage {stage!r}")
    return marked("response" if stage == "both" else stage, STAGE_LABELS[stage],
                  critique=stage != "compress", echo=echo)


def check_prompt(shape: Shape, prompt: Any, what: str) -> None:
    """Refuse a prompt whose template no longer asks for ``shape``: each marker or tag must
    appear in its system or user template, and a marked shape's labels must be the prompt's
    ``labels``. ``what`` names the stage in the message."""
    text = "\n".join(t for t in (prompt.system, prompt.user) if t)
    if shape.labels and tuple(prompt.labels) != shape.labels:
        raise ConfigError(
            f"{prompt.source}: labels {list(prompt.labels)} do not match the {what} reply's "
            f"declared shape (labels {list(shape.labels)})")
    needed = [f"<{t}>" for t in shape.tags] if shape.tags else shape.marks()
    for mark in needed:
        if mark.strip() and mark not in text:
            raise ConfigError(
                f"{prompt.source}: the template no longer asks for the marker {mark!r} that "
                f"the {what} reply must hold (declared shape: {describe(shape)})")


def describe(shape: Shape) -> str:
    """The shape in words, e.g. ``critique, [New Instruction] ... [End], ...``."""
    out = []
    for item in shape.items:
        if isinstance(item, Text):
            out.append(item.name if item.role != "part" else "...")
        elif isinstance(item, Mark) and item.text.strip():
            out.append(" ".join(item.text.split()))
        elif isinstance(item, Score):
            out.append("<0-10>")
        elif isinstance(item, Repeat):
            out.append(f"({describe(Shape('', item.items))}) x{item.min}+")
    return " ".join(out)


def bridges(shape: Shape) -> list[tuple[str, ...]]:
    """Per marker, in the shape's order, the texts that write it: with its canonical blanks
    (and the gap's before it) first, bare last. Local decoding writes the furthest one the
    grammar allows where the model would end its reply inside a text (see guided_local)."""
    out: list[tuple[str, ...]] = []
    gap = ""
    for item in _walk(shape.items):
        if isinstance(item, Gap):
            gap = item.canon
            continue
        if isinstance(item, Mark) and item.text.strip():
            canon = item.text if item.canon is None else item.canon
            out.append(tuple(dict.fromkeys([gap + canon, canon, item.text])))
        gap = ""
    return out


def guided_extra(guided: dict[str, Any] | None, cut: bool) -> dict[str, Any]:
    """A candidate's ``extra`` about its reply: the form that guided it (``off``: none),
    whether it was cut at max tokens, and how many of its texts the loop guard ended."""
    guided = guided or {}
    out: dict[str, Any] = {"guided": guided.get("used", "off")}
    if cut:
        out["cut"] = True
    if guided.get("looped"):
        out["looped"] = int(guided["looped"])
    return out


# ---------------------------------------------------------------- JSON replies


def from_json(shape: Shape, reply: str) -> str | None:
    """The marked text of a reply written as the shape's JSON object; None when ``reply`` is
    not such an object (cut at max tokens, or a server that ignored the schema)."""
    try:
        data = json.loads(reply)
    except (json.JSONDecodeError, RecursionError):
        return None
    try:
        return _render(shape.items, data)
    except (KeyError, TypeError, ValueError):
        return None


def _render(items: tuple[Element, ...], data: Any) -> str:
    if not isinstance(data, dict):
        raise TypeError("not an object")
    out = []
    for item in items:
        if isinstance(item, Text):
            value = data[item.name]
            if not isinstance(value, str) or (item.required and not value.strip()):
                raise ValueError(item.name)
            out.append(value.strip())
        elif isinstance(item, Mark):
            out.append(item.text if item.canon is None else item.canon)
        elif isinstance(item, Gap):
            out.append(item.canon)
        elif isinstance(item, Score):
            value = data[item.name]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10:
                raise ValueError(item.name)
            out.append(str(value))
        else:
            rows = data[item.name]
            if not isinstance(rows, list) or len(rows) < item.min:
                raise ValueError(item.name)
            out += [_render(item.items, row) for row in rows]
    return "".join(out)


def provenance(mode: str, used: str | None, via: str | None = None,
               note: str | None = None, looped: int = 0) -> dict[str, Any]:
    """How one call was guided: the ``--guided`` mode asked for, the form used (None:
    unguided), the field or engine that carried it, why it fell back, and how many of its
    texts the loop guard ended."""
    out: dict[str, Any] = {"mode": mode, "used": used or "off"}
    if via:
        out["via"] = via
    if note:
        out["note"] = note
    if looped:
        out["looped"] = looped
    return out
