"""A GGUF model through llama-cpp-python (optional extra ``rtune[llamacpp]``), in process.

About 2x the tokens/s of transformers at batch 16 on a small CPU, one request at a time. To
serve many clients, run llama.cpp's ``llama-server`` and point ``--oracle`` at its /v1 URL.

llama-cpp-python is compiled for the machine that built it: on a CPU without an instruction it
uses (AMX, AVX-512 on some cloud VMs) the process dies with SIGILL, which Python cannot catch.
So the model is first loaded and run for one token in a child process; a crash there becomes a
:class:`ConfigError` naming the signal, and the parent never runs the broken code.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
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
        probe(self.path)
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


_PROBE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, verbose=False)
llm.create_completion("Hi", max_tokens=1)
"""
_probed: set[Path] = set()


def probe(gguf: Path, *, timeout: float = 600.0) -> None:
    """Load ``gguf`` with llama.cpp and generate one token in a child process (once per file
    per process); raise :class:`ConfigError` if that crashes or fails."""
    key = gguf.resolve()
    if key in _probed:
        return
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, str(gguf)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"llama.cpp did not load {gguf.name} within {timeout:.0f} s") from None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        why = (" (an instruction this CPU lacks: the binding was built for another CPU)"
               if name == "SIGILL" else "")
        raise ConfigError(
            f"llama.cpp crashed with {name}{why} while loading {gguf.name}: rebuild it for "
            "this machine (CMAKE_ARGS=-DGGML_NATIVE=ON pip install --force-reinstall "
            "--no-cache-dir llama-cpp-python) or use --oracle local")
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ConfigError(f"llama.cpp failed to load {gguf.name} (exit {proc.returncode}): "
                          f"{last}")
    _probed.add(key)
