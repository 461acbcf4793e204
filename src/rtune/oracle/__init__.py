"""Oracle backends and the engine that drives them."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..extras import require
from .base import Backend, ChatRequest, ChatResult, PermanentError, TransientError
from .engine import Engine, EngineConfig

__all__ = ["Backend", "ChatRequest", "ChatResult", "Engine", "EngineConfig", "PermanentError",
           "TransientError", "is_local", "make_backend", "require_backend"]


def is_local(spec: str) -> bool:
    return not spec.startswith(("http://", "https://"))


def require_backend(spec: str) -> None:
    """Raise ConfigError (a :class:`~rtune.extras.MissingExtra` for a missing extra) when
    ``spec`` cannot run here; cheap, so callers check before they create anything."""
    if spec.startswith(("http://", "https://")):
        return
    if spec == "llamacpp" or spec.startswith("llamacpp:"):
        require("llamacpp", f"the model {spec!r}")
    elif spec == "local" or spec.startswith("local:") or Path(spec).exists():
        require("local", f"the local model {spec!r}")
    else:
        raise ConfigError(f"--oracle {spec!r}: expected 'local', 'local:/path', 'llamacpp' or "
                          "an http(s):// base URL of an OpenAI-compatible server")


def make_backend(spec: str = "local", *, model: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0,
                 context_length: int | None = None, batch_size: int = 8,
                 replicas: tuple[str, ...] = ()) -> Backend:
    """``local`` (embedded SmolLM2), ``local:/path`` (HF folder or .gguf), ``llamacpp[:/path]``,
    or an OpenAI-compatible base URL (``https://host/v1``); with ``replicas`` (more base URLs
    serving the same model) one :class:`~rtune.oracle.replicas.ReplicaBackend` over them all."""
    require_backend(spec)
    if replicas:
        from .http import HttpBackend
        from .replicas import ReplicaBackend

        urls = [spec, *replicas]
        return ReplicaBackend([HttpBackend(u, api_key_env=api_key_env, timeout=timeout,
                                           context_length=context_length) for u in urls], urls)
    if spec.startswith(("http://", "https://")):
        from .http import HttpBackend

        return HttpBackend(spec, api_key_env=api_key_env, timeout=timeout,
                           context_length=context_length)
    if spec == "llamacpp" or spec.startswith("llamacpp:"):
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(spec.partition(":")[2] or "local")
    from .local import LocalBackend

    path = spec.partition(":")[2] if spec.startswith("local:") else spec
    return LocalBackend(path or "local", batch_size=batch_size)
