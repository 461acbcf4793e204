"""A :class:`~rtune.guided.Shape` in the forms backends take: a regular expression, a GBNF
grammar, a JSON schema, and an llguidance (Lark) grammar for local constrained decoding.

The regex and GBNF forms use plain syntax every server reads (no look-arounds, no
back-references, explicit blank classes): vLLM and SGLang compile regexes with xgrammar,
outlines or llguidance, llama.cpp reads GBNF, vLLM's grammar field takes GBNF too. They keep
each text free of the shape's literal markers (case-insensitive), so every marker in a reply
is one the shape put there. The llguidance form can intersect and negate regexes (``&``,
``~``), so its texts are also kept free of everything else the tolerant parser would read as a
marker, an End, a tag, a placeholder or "N/A".
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any

from .guided import Element, Gap, Mark, Repeat, Score, Shape, Text

BLANKS = " \t\r\n\x0b\x0c"

# ---------------------------------------------------------------- a small regex tree


@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Chars:
    chars: str
    negate: bool = False


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Rep:
    item: Node
    min: int = 0
    max: int | None = None  # None: unbounded; 1: optional


Node = Lit | Chars | Seq | Alt | Rep


def _char(c: str) -> Node:
    """``c`` in either case."""
    both = c.lower() + c.upper()
    return Chars(both) if len(set(both)) > 1 else Lit(c)


class _Trie:
    def __init__(self) -> None:
        self.children: dict[str, _Trie] = {}
        self.end = False


def avoid(literals: tuple[str, ...], *, required: bool) -> Node:
    """Text holding none of ``literals`` (case-insensitive); ``required``: and a non-blank
    character. The literals must all start with one character that appears nowhere else in
    them (``[`` of the markers, ``<`` of the tags): then, on reading it again, a partly read
    literal can only start over, and the automaton of the forbidden texts is a trie whose
    paths back to the start turn into a regex of the literals' total length."""
    anything = Alt((Chars(BLANKS), Chars(BLANKS, negate=True)))
    if not literals:
        body: Node = Rep(anything)
        return Seq((Rep(Chars(BLANKS)), Chars(BLANKS, negate=True), body)) if required else body
    start = literals[0][0]
    if any(lit[0] != start or start in lit[1:] for lit in literals):
        raise ValueError(f"literals must share a first character found nowhere else: {literals}")
    trie = _Trie()
    for lit in literals:
        node = trie
        for c in lit[1:].lower():
            node = node.children.setdefault(c, _Trie())
        node.end = True
    loop = Rep(_back(trie, start))
    body = Seq((Rep(Alt((Chars(start, negate=True), Seq((Lit(start), loop, _home(trie, start)))))),
                Rep(Seq((Lit(start), loop, _partial(trie))), max=1)))
    if not required:
        return body
    first = Alt((Seq((Chars(BLANKS + start, negate=True), body)),
                 Seq((Lit(start), loop, Alt((Seq((_home(trie, start), body)), _partial(trie)))))))
    return Seq((Rep(Chars(BLANKS)), first))


def _open(trie: _Trie) -> list[tuple[str, _Trie]]:
    return [(c, t) for c, t in trie.children.items() if not t.end]


def _back(trie: _Trie, start: str) -> Node:
    """Paths from ``trie`` that read ``start`` again (and so begin a literal anew)."""
    return Alt((Lit(start), *[Seq((_char(c), _back(t, start))) for c, t in _open(trie)]))


def _home(trie: _Trie, start: str) -> Node:
    """Paths from ``trie`` that leave every literal (a character no literal continues with)."""
    stop = start + "".join(c.lower() + c.upper() for c in trie.children)
    return Alt((Chars(stop, negate=True), *[Seq((_char(c), _home(t, start)))
                                            for c, t in _open(trie)]))


def _partial(trie: _Trie) -> Node:
    """Paths from ``trie`` that end the text inside a literal."""
    return Rep(Alt(tuple(Seq((_char(c), _partial(t))) for c, t in _open(trie))), max=1) \
        if _open(trie) else Lit("")


def literals(shape: Shape) -> tuple[str, ...]:
    """The texts no free text of ``shape`` may hold: its bracketed markers, or its tags."""
    if shape.tags:
        return tuple(f"<{s}{t}>" for t in shape.tags for s in ("", "/"))
    return tuple(dict.fromkeys(m for m in shape.marks() if m.startswith("[")))


def tree(shape: Shape) -> Node:
    """The whole reply of ``shape`` as one regex tree."""
    forbidden = literals(shape)

    def build(items: tuple[Element, ...]) -> Node:
        out: list[Node] = []
        for item in items:
            if isinstance(item, Text):
                out.append(avoid(() if item.role == "free" else forbidden,
                                 required=item.required))
            elif isinstance(item, Mark):
                out.append(Lit(item.text))
            elif isinstance(item, Gap):
                out.append(Rep(Chars(BLANKS)))
            elif isinstance(item, Score):
                out.append(Alt((Lit("10"), Chars("0123456789"))))
            else:
                out.append(Rep(build(item.items), min=item.min))
        return Seq(tuple(out))

    return build(shape.items)


# ---------------------------------------------------------------- regex


_REGEX_ESCAPES = {"\n": r"\n", "\t": r"\t", "\r": r"\r", "\x0b": r"\x0B", "\x0c": r"\x0C"}


def _regex_char(c: str, in_class: bool) -> str:
    if c in _REGEX_ESCAPES:
        return _REGEX_ESCAPES[c]
    special = "\\]^-[" if in_class else "\\.^$|?*+()[]{}/"
    return "\\" + c if c in special else c


def _regex(node: Node) -> str:
    if isinstance(node, Lit):
        return "".join(_regex_char(c, False) for c in node.text)
    if isinstance(node, Chars):
        body = "".join(_regex_char(c, True) for c in node.chars)
        return f"[{'^' if node.negate else ''}{body}]"
    if isinstance(node, Seq):
        return "".join(_group(i) if isinstance(i, Alt) else _regex(i) for i in node.items)
    if isinstance(node, Alt):
        return "|".join(_regex(i) for i in node.items)
    inner = _regex(node.item)
    if not (isinstance(node.item, Chars) or (isinstance(node.item, Lit)
                                             and len(node.item.text) == 1)):
        inner = f"(?:{inner})"
    return inner + _quantifier(node)


def _group(node: Node) -> str:
    return f"(?:{_regex(node)})"


def _quantifier(rep: Rep) -> str:
    if rep.max == 1:
        return "?" if rep.min == 0 else ""
    return {0: "*", 1: "+"}.get(rep.min, f"{{{rep.min},}}")


@functools.lru_cache(maxsize=64)
def regex(shape: Shape) -> str:
    """The reply as a regular expression (whole-reply match)."""
    return _regex(tree(shape))


@functools.lru_cache(maxsize=64)
def _compiled(shape: Shape) -> re.Pattern[str]:
    return re.compile(regex(shape))


def conforms(shape: Shape, text: str) -> bool:
    """Whether ``text`` is a complete reply of ``shape`` (its regex form). The regex is
    unambiguous (each position has one way on), so matching takes time linear in the text."""
    return _compiled(shape).fullmatch(text) is not None


# ---------------------------------------------------------------- GBNF


def _gbnf_char(c: str, in_class: bool) -> str:
    if c in _REGEX_ESCAPES:
        return _REGEX_ESCAPES[c]
    special = "\\]^-[\"" if in_class else "\\\""
    return f"\\x{ord(c):02X}" if c in special else c


def _gbnf(node: Node) -> str:
    if isinstance(node, Lit):
        return '"' + "".join(_gbnf_char(c, False) for c in node.text) + '"'
    if isinstance(node, Chars):
        body = "".join(_gbnf_char(c, True) for c in node.chars)
        return f"[{'^' if node.negate else ''}{body}]"
    if isinstance(node, Seq):
        return " ".join(f"({_gbnf(i)})" if isinstance(i, Alt) else _gbnf(i)
                        for i in node.items if i != Lit(""))
    if isinstance(node, Alt):
        return " | ".join(_gbnf(i) for i in node.items)
    inner = f"({_gbnf(node.item)})"
    if node.max == 1:
        return inner + ("?" if node.min == 0 else "")
    return " ".join([inner] * node.min) + (f" {inner}*" if node.min else f"{inner}*")


@functools.lru_cache(maxsize=64)
def gbnf(shape: Shape) -> str:
    """The reply as a GBNF grammar (llama.cpp server ``grammar``; vLLM's grammar field)."""
    return "root ::= " + _gbnf(tree(shape)) + "\n"


# ---------------------------------------------------------------- JSON schema


def _object(items: tuple[Element, ...]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for item in items:
        if isinstance(item, Text):
            props[item.name] = {"type": "string"}
        elif isinstance(item, Score):
            props[item.name] = {"type": "integer", "minimum": 0, "maximum": 10}
        elif isinstance(item, Repeat):
            props[item.name] = {"type": "array", "items": _object(item.items),
                                "minItems": item.min}
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": False}


def json_schema(shape: Shape) -> dict[str, Any]:
    """The reply as a JSON object, its texts in the shape's order (the critique first)."""
    return _object(shape.items)


def response_format(shape: Shape) -> dict[str, Any]:
    """OpenAI's ``response_format`` for structured outputs."""
    return {"type": "json_schema", "json_schema": {
        "name": "rtune_" + shape.name.replace("-", "_"), "strict": True,
        "schema": json_schema(shape)}}


# ---------------------------------------------------------------- llguidance (Lark)


_WS = r"[ \t\n\r\x0B\x0C]"  # ASCII blanks: Unicode classes and case folding multiply the
# states of llguidance's byte-level lexer past its limits on a partly written character


def _ci(text: str) -> str:
    """``text`` in any ASCII letter case, blanks between words (as the parser reads labels)."""
    def char(c: str) -> str:
        return f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c).replace("/", r"\/")

    return f"{_WS}+".join("".join(map(char, w)) for w in text.split())


_ANY = "(?s:.*)"
_HEAD = r"[ \t>*_`#+\-.)0-9]*"  # what may stand before a label on its line (a superset)
_TAIL = r"[ \t]*[*_`]*[ \t]*[:\n]"  # what follows a label that makes it a line marker
_END = r"[ \t>*_`]*[Ee][Nn][Dd][ \t]*[*_`]*[ \t]*\n"  # a line holding only End


def _lark_text(shape: Shape, text: Text) -> str:
    """A text's terminal: what it may hold, minus what it may not. Everything it may not
    contain is one alternation under one negation (llguidance builds its lexer from regex
    derivatives, and several negations at once multiply its states past its limits)."""
    # a character the parser's strip() keeps (Unicode blanks too; a positive class is cheap)
    nonblank = r"[^\s*_\"`]" if text.role == "part" else r"\S"
    terms = [f"/{_ANY}{nonblank}{_ANY}/" if text.required else f"/{_ANY}/"]
    inside: list[str] = []  # anywhere in the text
    first: list[str] = []  # at the text's start (a line start for the parser)
    labels = "|".join(_ci(label) for label in shape.labels)
    if text.role in ("critique", "part") and labels:
        inside += [rf"\[{_WS}*(?:{labels}){_WS}*\]", rf"\n{_HEAD}(?:{labels}){_TAIL}",
                   rf"\[{_WS}*(?:\/{_WS}*)?[Ee][Nn][Dd]{_WS}*\]"]
        first.append(rf"{_HEAD}(?:{labels}){_TAIL}")
    if text.role == "part":
        inside.append(rf"\n{_END}")
        first.append(_END)
        if shape.echo:
            inside.append("(?:" + "|".join(_ci(p) for p in shape.echo) + ")")
    if text.role in ("reasoning", "answer") and shape.tags:
        tags = "|".join(_ci(t) for t in shape.tags)
        inside.append(rf"<{_WS}*\/?{_WS}*(?:{tags}){_WS}*>")
    if text.role == "reasoning":
        inside.append(r"\n[ \t]*(?:```|~~~)")
        first.append(r"[ \t]*(?:```|~~~)")
    if inside:
        terms.append(f"~/{_ANY}(?:{'|'.join(inside)}){_ANY}/")
    if first:
        terms.append(f"~/(?:{'|'.join(first)}){_ANY}/")
    if text.role == "part":
        na = "|".join(_ci(w) for w in ("n/a", "na", "none", "null", "nothing"))
        terms.append(rf'~/[ \t\n\r\x0B\x0C*_"`\-]*(?:{na}|-+|\.\.\.)\.?[ \t\n\r\x0B\x0C*_"`\-]*/')
    return " & ".join(terms)


def _lark_literal(text: str) -> str:
    return json.dumps(text)


@functools.lru_cache(maxsize=64)
def lark(shape: Shape) -> str:
    """The reply as an llguidance grammar: one terminal (a single lexeme, so no lexing
    choices), each text a named terminal with its exclusions."""
    names: dict[Text, str] = {}

    def build(items: tuple[Element, ...]) -> str:
        out = []
        for item in items:
            if isinstance(item, Text):
                names.setdefault(item, f"T{len(names)}_{item.name.upper()}")
                out.append(names[item])
            elif isinstance(item, Mark):
                out.append(_lark_literal(item.text))
            elif isinstance(item, Gap):
                out.append(f"/{_WS}*/")
            elif isinstance(item, Score):
                out.append("/10|[0-9]/")
            else:
                body = f"({build(item.items)})"
                out.append(" ".join([body] * item.min) + f" {body}*" if item.min
                           else f"{body}*")
        return " ".join(out)

    reply = build(shape.items)
    lines = ["start: REPLY", f"REPLY: {reply}"]
    lines += [f"{name}: {_lark_text(shape, text)}" for text, name in names.items()]
    return "\n".join(lines) + "\n"
