"""Oracle backends and the engine that drives them."""

from __future__ import annotations

from ..errors import ConfigError
from ..extras import require
from ..model_spec import ModelSpec
from .base import Backend, ChatRequest, ChatResult, PermanentError, TransientError
from .engine import Engine, EngineConfig

__all__ = ["Backend", "ChatRequest", "ChatResult", "Engine", "EngineConfig", "PermanentError",
           "TransientError", "is_local", "make_backend", "require_backend"]


def is_local(spec: str) -> bool:
    return not ModelSpec.parse(spec).is_endpoint


def require_backend(spec: str) -> None:
    """Raise ConfigError (a :class:`~rtune.extras.MissingExtra` for a missing extra) when
    ``spec`` cannot run here; cheap, so callers check before they create anything."""
    parsed = ModelSpec.parse(spec)
    if parsed.is_endpoint:
        return
    if parsed.kind == "llamacpp":
        require("llamacpp", f"the model {spec!r}")
    elif parsed.path is None or parsed.text.strip().startswith("local:") or parsed.path.exists():
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
    parsed = ModelSpec.parse(spec, model)
    if replicas:
        from .http import HttpBackend
        from .replicas import ReplicaBackend

        urls = [spec, *replicas]
        return ReplicaBackend([HttpBackend(u, api_key_env=api_key_env, timeout=timeout,
                                           context_length=context_length) for u in urls], urls)
    if parsed.is_endpoint:
        from .http import HttpBackend

        return HttpBackend(spec, api_key_env=api_key_env, timeout=timeout,
                           context_length=context_length)
    if parsed.kind == "llamacpp":
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(str(parsed.path) if parsed.path else "local")
    from .local import LocalBackend

    return LocalBackend(str(parsed.path) if parsed.path else "local", batch_size=batch_size)
