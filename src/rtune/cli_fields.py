"""Command-line options built from a settings dataclass: each field's flag, type, default and
help are declared once, on the field (``field(metadata={"help": ...})``).

A few dozen lines instead of a dependency (TRL's HfArgumentParser, simple-parsing): rtune's
core install stays torch-free and its flags keep their names. Metadata keys: ``help``
(required: a field without it gets no option), ``flag`` (default ``--field-name``; a tuple for
several shown spellings), ``aliases`` (older spellings, accepted and hidden), ``type`` (a
converter), and argparse's own ``metavar``, ``choices``, ``nargs``, ``const``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable
from typing import Any


def settings_field(default: Any = dataclasses.MISSING, help: str = "", **meta: Any) -> Any:
    """A dataclass field with its command-line help (and flag, aliases, ...) beside it."""
    factory = dataclasses.MISSING
    if isinstance(default, (list, dict, set)):
        factory, default = (lambda v=default: type(v)(v)), dataclasses.MISSING
    return dataclasses.field(default=default, default_factory=factory,
                             metadata={"help": help, **meta})


def _base_type(hint: Any) -> Any:
    """``int | None`` -> int; other unions and generics as they are."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def add_fields(parser: argparse.ArgumentParser | Any, cls: type, *,
               only: Iterable[str] | None = None, exclude: Iterable[str] = (),
               defaults: dict[str, Any] | None = None, **overrides: dict[str, Any]) -> None:
    """One option per field of ``cls`` that has help (``only`` / ``exclude`` pick them;
    ``defaults`` replace a field's default on this command; ``overrides[name]`` replace
    add_argument keywords of one field). The option's dest is the field's name."""
    hints = typing.get_type_hints(cls)
    chosen = set(only) if only is not None else None
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        if not meta.get("help") or f.name in exclude or (chosen is not None
                                                         and f.name not in chosen):
            continue
        default = (defaults or {}).get(f.name, f.default if f.default is not dataclasses.MISSING
                                       else None)
        kind = _base_type(hints.get(f.name, str))
        kw: dict[str, Any] = {"dest": f.name, "default": default, "help": meta["help"]}
        if kind is bool:  # a default of True or None can be switched either way
            kw["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        else:
            kw["type"] = meta.get("type") or (kind if kind in (int, float) else str)
            for key in ("metavar", "choices", "nargs", "const"):
                if key in meta:
                    kw[key] = meta[key]
        kw.update(overrides.get(f.name, {}))
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        parser.add_argument(*((flag,) if isinstance(flag, str) else flag), **kw)
        for alias in meta.get("aliases", ()):
            hidden = {k: v for k, v in kw.items() if k not in ("default", "help", "metavar")}
            parser.add_argument(alias, **hidden, default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)


def values(cls: type, args: argparse.Namespace, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The parsed values of ``cls``'s fields that the command has options for."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.init and f.name not in exclude and hasattr(args, f.name)}
