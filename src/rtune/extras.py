"""Optional dependencies ("extras"): which job needs which packages, and the one-line hint.

The core install (recycling through endpoints, status, export, select, judge, stats) has no
torch. Local models, training, figures, parquet input, lm-eval and llama.cpp are extras; a
command that needs one says so in one line (``MissingExtra``, exit 2) instead of a traceback.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Extra:
    name: str
    purpose: str
    modules: tuple[str, ...]

    @property
    def install(self) -> str:
        return f"pip install 'rtune[{self.name}]'"


EXTRAS: dict[str, Extra] = {e.name: e for e in (
    Extra("local", "local-models", ("torch", "transformers", "accelerate", "gguf", "safetensors",
                                    "llguidance")),
    Extra("train", "training", ("torch", "transformers", "accelerate", "peft", "datasets")),
    Extra("report", "figures", ("matplotlib", "numpy")),
    Extra("data", "parquet/arrow input", ("pyarrow", "datasets")),
    Extra("bench", "benchmark", ("lm_eval",)),
    Extra("llamacpp", "llama.cpp", ("llama_cpp",)),
)}


class MissingExtra(ConfigError):
    """A job needs an extra that is not installed."""

    def __init__(self, job: str, extra: Extra, module: str):
        self.extra = extra
        self.module = module
        super().__init__(f"{job} needs the {extra.purpose} extra: {extra.install} "
                         f"({module} is not installed)")


def missing(extra: str) -> str | None:
    """The first module of ``extra`` that is not importable, or None when all are."""
    for module in EXTRAS[extra].modules:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    return None


def require(extra: str, job: str) -> None:
    """Raise :class:`MissingExtra` unless every package of ``extra`` is installed; call it
    before anything is loaded or written, so a missing extra costs nothing."""
    module = missing(extra)
    if module is not None:
        raise MissingExtra(job, EXTRAS[extra], module)


def extra_for_module(module: str | None) -> Extra | None:
    """The extra that brings top-level package ``module`` (for an ImportError's ``name``)."""
    top = (module or "").split(".")[0]
    for extra in EXTRAS.values():
        if top in extra.modules:
            return extra
    return None
