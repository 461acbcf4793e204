"""The settings a recipe section accepts, read from the stages themselves.

A section's names, types and defaults come from the stage's config dataclass
(``RecycleConfig``, ``ScoreConfig``, ``TrainConfig``, ``EndpointConfig``) or, for stages
configured by keyword arguments (``select``, ``generate``, ``judge``, ``bench``), from the
function's signature (``inspect``): one source for the CLI, the Python API and recipes.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import os
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Setting:
    name: str
    hint: Any  # the resolved type annotation
    default: Any  # REQUIRED when the stage has no default

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def dataclass_settings(cls: type, exclude: Iterable[str] = ()) -> dict[str, Setting]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = REQUIRED
        out[f.name] = Setting(f.name, hints.get(f.name, Any), default)
    return out


def signature_settings(func: Callable[..., Any],
                       exclude: Iterable[str] = ()) -> dict[str, Setting]:
    hints = typing.get_type_hints(func)
    out = {}
    for p in inspect.signature(func).parameters.values():
        if p.name in exclude or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[p.name] = Setting(p.name, hints.get(p.name, Any), p.default)
    return out


class Mismatch(Exception):
    """The value does not have the setting's type; ``str(e)`` says what was expected."""


def check(value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` asks (a list for a tuple, an int for a float), or
    :class:`Mismatch`. Booleans are never numbers, numbers never strings."""
    if hint is Any or hint is object:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            try:
                return check(value, arm)
            except Mismatch:
                continue
        raise Mismatch(describe(hint))
    if hint is type(None):
        if value is None:
            return None
        raise Mismatch("null")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise Mismatch("true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise Mismatch("an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise Mismatch("a number")
    if hint is str or hint in (Path, os.PathLike) or origin is os.PathLike:
        if isinstance(value, str):
            return value
        raise Mismatch("a string")
    if origin in (tuple, list, collections.abc.Sequence):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        if not isinstance(value, list):
            raise Mismatch(describe(hint))
        try:
            items = [check(v, item) for v in value]
        except Mismatch:
            raise Mismatch(describe(hint)) from None
        return tuple(items) if origin is tuple else items
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise Mismatch("a mapping")
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise Mismatch(describe(hint))


def describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(a) for a in typing.get_args(hint)))
    if origin in (tuple, list, collections.abc.Sequence):
        args = typing.get_args(hint)
        return f"a list of {_plural(describe(args[0]))}" if args else "a list"
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number",
             str: "a string", Path: "a string", dict: "a mapping"}
    if hint in names:
        return names[hint]
    if origin is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _plural(text: str) -> str:
    words = {"a string": "strings", "an integer": "integers", "a number": "numbers",
             "true or false": "booleans"}
    return words.get(text, text)


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)
