"""A GGUF model through llama-cpp-python (optional extra ``rtune[llamacpp]``), in process.

About 2x the tokens/s of transformers at batch 16 on a small CPU, one request at a time. To
serve many clients, run llama.cpp's ``llama-server`` and point ``--oracle`` at its /v1 URL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..models import embedded_gguf, spec_path
from .base import ChatRequest, ChatResult, PermanentError


class LlamaCppBackend:
    """``spec``: ``local`` (the embedded SmolLM2 GGUF), ``local:/path.gguf`` or a .gguf path."""

    runs_locally = True  # no engine deadline: calls queue behind the one running model

    def __init__(self, spec: str = "local", *, context_length: int | None = None,
                 n_threads: int | None = None, seed: int = 0):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ConfigError("--oracle llamacpp needs llama-cpp-python: pip install "
                              "'rtune[llamacpp]' (it builds llama.cpp from source, ~5 min), "
                              "or use --oracle local") from None
        path = spec_path(spec)
        gguf = embedded_gguf() if path is None else path
        if not (gguf.is_file() and gguf.suffix.lower() == ".gguf"):
            raise ConfigError(f"--oracle llamacpp: {gguf} is not a .gguf file (llama.cpp "
                              "reads GGUF only; use --oracle local:/path for a HF folder)")
        self.path = Path(gguf)
        self.name = self.path.stem
        # n_threads default: llama-cpp-python's own (half the logical cores). Its threads
        # busy-wait, so more threads than free cores is far slower (measured 45 s vs 2 s).
        threads = {"n_threads": n_threads} if n_threads else {}
        self._llm: Any = Llama(model_path=str(gguf), n_ctx=context_length or 0, seed=seed,
                               verbose=False, **threads)
        self.context_length: int | None = int(self._llm.n_ctx())
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _chat(self, request: ChatRequest) -> dict:
        return self._llm.create_chat_completion(
            messages=[dict(m) for m in request.messages], temperature=request.temperature,
            top_p=request.top_p, top_k=0, min_p=0.0, max_tokens=request.max_tokens,
            stop=list(request.stop) if request.stop else None)

    async def complete(self, request: ChatRequest, *, timeout: float | None = None) -> ChatResult:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:  # a llama.cpp context serves one request at a time
            try:
                out = await asyncio.to_thread(self._chat, request)
            except ValueError as e:  # llama-cpp-python's "Requested tokens exceed context"
                reason = "context_length" if "context" in str(e).lower() else "bad_request"
                raise PermanentError(reason, str(e)) from None
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return ChatResult(text=choice["message"].get("content") or "",
                          tokens_in=int(usage.get("prompt_tokens", 0)),
                          tokens_out=int(usage.get("completion_tokens", 0)),
                          finish_reason=choice.get("finish_reason"), model=self.name)

    async def aclose(self) -> None:
        """Nothing to release between runs; the model stays loaded for the next stage."""
