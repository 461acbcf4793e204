"""rtune: Reflection-Tuning made real.

Each step is a verb of the package: ``rtune.recycle(input, run_dir, config)``,
``rtune.score(run_dir, config)``, ``rtune.select(...)``, ``rtune.train(...)``,
``rtune.generate(...)``, ``rtune.judge(...)``, ``rtune.reflect(...)``, ``rtune.bench(...)``,
``rtune.report(...)``. A verb is its stage module made callable (``rtune.recycle`` is still
the module ``rtune.recycle``), imported when first used, so ``import rtune`` stays light.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from .errors import ConfigError, InputError, RtuneError
from .io import read_records, write_records
from .records import Record
from .store import RunStore

__version__ = "0.2.0"

# verb -> the function its stage module runs
VERBS = {"recycle": "recycle", "score": "score_run", "select": "select", "train": "train",
         "generate": "generate", "judge": "judge", "reflect": "reflect", "bench": "bench",
         "report": "build_report"}

__all__ = ["ConfigError", "InputError", "Record", "RtuneError", "RunStore", "read_records",
           "write_records", "__version__", *VERBS]


class _Verb(types.ModuleType):
    """A stage module that, called, runs its stage."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, VERBS[self.__name__.rpartition(".")[2]])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in VERBS and isinstance(value, types.ModuleType):
            value.__class__ = _Verb  # the import system binds a loaded submodule here
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        if name in VERBS:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package
for _name in VERBS:  # stage modules the imports above already loaded
    if f"{__name__}.{_name}" in sys.modules:
        setattr(sys.modules[__name__], _name, sys.modules[f"{__name__}.{_name}"])
