"""What a run was made from: its input (path + SHA-256 of the content) and the settings that
change its results.

A run folder keeps both in its store (meta ``identity``). While the store holds candidates, a
later command into the same folder must bring the same input (the same content; a moved file
is the same input) and the same settings, else it is refused with the two file names, so one
folder never mixes two runs. A store without candidates takes any input: its cached calls are
keyed by their full request, so they can't mix. Runs made before the identity was kept hold
only ``meta["input"]`` (the resolved path); that path must match.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .store import RunStore

META_KEY = "identity"
_CHUNK = 1 << 20
AFRESH = ("use --force-new to start the folder afresh (its candidates and paid calls are "
          "deleted), or another --run-dir")


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode("utf-8", "surrogatepass") + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def run_identity(input_path: str | Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The identity to keep: the input's resolved path and content hash, and ``settings``
    as they read back from JSON (so a stored copy compares equal)."""
    path = Path(input_path)
    return {"input": {"path": str(path.resolve()), "sha256": content_hash(path)},
            "settings": json.loads(json.dumps(settings))}


def check_same_run(store: RunStore, identity: dict[str, Any]) -> None:
    """Refuse (:class:`ConfigError`) when the store holds candidates of another input or made
    with other settings; otherwise keep ``identity`` as the run's."""
    old = store.get_meta(META_KEY)
    new_in = identity["input"]
    if not store.has_candidates():
        pass
    elif old is None:
        legacy = store.get_meta("input")
        if legacy is not None and legacy != new_in["path"]:
            raise _other_input(store.run_dir, legacy, new_in["path"])
    else:
        _compare(store.run_dir, old, identity)
    store.set_meta(META_KEY, identity)
    store.set_meta("input", new_in["path"])


def _compare(run_dir: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    old_in, new_in = old["input"], new["input"]
    if old_in["sha256"] != new_in["sha256"]:
        if old_in["path"] == new_in["path"]:
            raise ConfigError(
                f"{run_dir} holds a run of {old_in['path']} as it was then; the file has "
                f"changed since (sha256 {old_in['sha256'][:12]} -> {new_in['sha256'][:12]}): "
                f"{AFRESH}")
        raise _other_input(run_dir, old_in["path"], new_in["path"])
    before, now = old.get("settings", {}), new["settings"]
    diffs = [f"{k} {before[k]!r} -> {now[k]!r}" for k in sorted(now)
             if k in before and before[k] != now[k]]
    if diffs:
        raise ConfigError(f"{run_dir} was made with other settings ({'; '.join(diffs)}): "
                          f"{AFRESH}")


def _other_input(run_dir: Path, old: str, new: str) -> ConfigError:
    return ConfigError(f"{run_dir} holds a run of {old}, not of {new}: {AFRESH}")
