"""Reading a recipe's YAML while keeping where every key is written.

``yaml.compose`` gives each node a start mark (0-based line); the values here are built from
those nodes, so every key path has the 1-based line it was written on, and an error can name
both. PyYAML reads YAML 1.1, where ``2e-5`` (no dot) is a string: plain (unquoted) scalars of
that shape are read as numbers here, as a user writing a learning rate means.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

Key = tuple[str | int, ...]
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class RecipeError(ConfigError):
    """A recipe problem, named by file, line and key, on one line."""

    def __init__(self, where: str, key: str | None, message: str):
        self.where = where
        self.key = key
        self.reason = message
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


def dotted(key: Key) -> str:
    """``("arms", "x", "data")`` -> ``arms.x.data``; list items as ``pairs[0]``."""
    out = ""
    for part in key:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@dataclass
class Document:
    """A recipe's values and the line of every key (``None``: set with ``--set``)."""

    path: Path
    data: dict[str, Any]
    lines: dict[Key, int | None] = field(default_factory=dict)

    def where(self, key: Key) -> str:
        """``recipe.yaml, line 12`` for ``key`` (or its nearest written parent)."""
        for n in range(len(key), 0, -1):
            if key[:n] in self.lines:
                line = self.lines[key[:n]]
                if line is None:
                    return f"{self.path} (--set {dotted(key[:n])})"
                return f"{self.path}, line {line}"
        return str(self.path)

    def from_command_line(self, key: Key) -> bool:
        """Whether ``key`` (or the parent holding it) was given with ``--set``."""
        for n in range(len(key), 0, -1):
            if key[:n] in self.lines:
                return self.lines[key[:n]] is None
        return False

    def error(self, key: Key, message: str) -> RecipeError:
        return RecipeError(self.where(key), dotted(key) if key else None, message)


def load_document(path: str | Path) -> Document:
    """Parse ``path``: a mapping at the top, no duplicate keys, string keys only."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RecipeError(str(path), None, f"cannot read the recipe ({e.strerror})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(where, None, f"not valid YAML: {problem}") from None
    doc = Document(path, {})
    if node is None:
        raise RecipeError(str(path), None, "the recipe is empty")
    if not isinstance(node, yaml.MappingNode):
        raise RecipeError(f"{path}, line {node.start_mark.line + 1}", None,
                          "a recipe is a mapping of keys (data:, arms:, train: ...)")
    doc.data = _value(node, (), doc)
    return doc


def apply_override(doc: Document, assignment: str) -> None:
    """``--set train.learning_rate=1e-4``: the value is read as YAML."""
    name, sep, text = assignment.partition("=")
    name = name.strip()
    if not sep or not name or any(not p for p in name.split(".")):
        raise RecipeError("--set", None, f"expected KEY=VALUE (e.g. train.learning_rate=1e-4), "
                          f"got {assignment!r}")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise RecipeError("--set", name, f"not a YAML value: {getattr(e, 'problem', e)}") from None
    key: Key = tuple(name.split("."))
    value = None if node is None else _value(node, key, Document(doc.path, {}))
    target = doc.data
    for n, part in enumerate(key[:-1]):
        child = target.get(part)
        if child is None:
            child = target[part] = {}
            doc.lines.setdefault(key[:n + 1], None)
        if not isinstance(child, dict):
            raise doc.error(key[:n + 1], f"is not a mapping, cannot --set {name}")
        target = child
    target[key[-1]] = value
    for k in [k for k in doc.lines if k[:len(key)] == key]:
        del doc.lines[k]
    doc.lines[key] = None


_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _value(node: yaml.Node, key: Key, doc: Document) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != \
                    "tag:yaml.org,2002:str":
                raise RecipeError(f"{doc.path}, line {line}", dotted(key) or None,
                                  "keys must be plain names")
            name = key_node.value
            if name in out:
                raise RecipeError(f"{doc.path}, line {line}", dotted((*key, name)),
                                  f"duplicate key (first at line {doc.lines[(*key, name)]})")
            doc.lines[(*key, name)] = line
            out[name] = _value(value_node, (*key, name), doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for n, item in enumerate(node.value):
            doc.lines[(*key, n)] = item.start_mark.line + 1
            items.append(_value(item, (*key, n), doc))
        return items
    value = _CONSTRUCTOR.construct_object(node, deep=True)
    if (isinstance(value, str) and node.style is None
            and _EXPONENT_NUMBER.fullmatch(value)):
        return float(value)
    return value
