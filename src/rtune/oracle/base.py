"""What every oracle backend speaks: a chat request in, a chat result out."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Protocol

from ..errors import RtuneError
from ..guided import GuidedSpec


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[dict[str, str], ...] | list[dict[str, str]]
    model: str
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 2048
    stop: tuple[str, ...] | None = None
    # the reply's shape and --guided mode; part of the key (a guided call is another call)
    guided: GuidedSpec | None = None

    def payload(self) -> dict:
        d = asdict(self)
        d["messages"] = [dict(m) for m in self.messages]
        if d["stop"] is None:
            del d["stop"]
        else:
            d["stop"] = list(d["stop"])
        if self.guided is None:
            del d["guided"]
        else:
            d["guided"] = self.guided.describe()
        return d

    def key(self) -> str:
        """Content hash of (model, messages, params): the cache key of a finished call."""
        blob = json.dumps(self.payload(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class ChatResult:
    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    finish_reason: str | None = None
    model: str = ""
    cached: bool = False
    latency: float | None = None
    extra: dict = field(default_factory=dict)


class TransientError(Exception):
    """A failure worth retrying (429, 5xx, timeout, cut or garbage body)."""

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


class ConnectionRefused(TransientError):
    """Nothing listens at the endpoint's address (the connection was refused at once)."""

    def __init__(self, detail: str = ""):
        super().__init__("connection_refused", detail)


class PermanentError(Exception):
    """A failure that retrying will not fix (400 bad request, 401, context too long...)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class FatalError(RtuneError):
    """A failure every other call would hit too (the endpoint refused the key, nothing listens
    at its address): the run stops at once. Calls finished before it stay in the run store; the
    command exits with status 1, as when some calls failed."""

    exit_code = 1

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Backend(Protocol):
    """An oracle backend. ``complete`` is awaited concurrently by the engine; backends that
    batch (local models) gather concurrent requests into batches themselves."""

    name: str
    context_length: int | None

    async def complete(self, request: ChatRequest, *, timeout: float | None = None) -> ChatResult:
        ...

    def count_tokens(self, text: str) -> int:
        ...

    async def aclose(self) -> None:
        ...
