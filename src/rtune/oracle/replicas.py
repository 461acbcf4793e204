"""Several servers of one model behind one backend: least-outstanding routing, and a replica
that fails is backed off while the others go on.

The engine keeps its one sliding window (``--concurrency`` calls in flight in all); each call
goes to the healthy replica with the fewest calls in flight (ties: the one used least).
A passing failure (connection refused or lost, 429, 5xx, timeout, a bad body) backs that
replica off (1 s, doubling per failure in a row, at most 30 s, or the server's Retry-After)
and the call moves to another replica at once; only when every replica is backed off does
the error reach the engine, which retries it with its own backoff. Errors that any replica
would give (400, a refused key) go to the engine as they are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .base import Backend, ChatRequest, ChatResult, ConnectionRefused, TransientError

BACKOFF_BASE = 1.0
BACKOFF_MAX = 30.0


@dataclass
class Replica:
    backend: Backend
    url: str
    inflight: int = 0
    calls: int = 0  # answered
    failures: dict[str, int] = field(default_factory=dict)  # by reason
    streak: int = 0  # failures in a row
    down_until: float = 0.0
    last_error: str | None = None
    last_reason: str | None = None  # of the last call: None when it was answered

    def counts(self) -> dict[str, Any]:
        return {"url": self.url, "calls": self.calls, "failures": dict(self.failures),
                "inflight": self.inflight, "last_error": self.last_error}


class ReplicaBackend:
    """One backend over ``backends`` serving the same model (``urls`` name them)."""

    def __init__(self, backends: list[Backend], urls: list[str]):
        self.replicas = [Replica(b, u) for b, u in zip(backends, urls)]
        first = backends[0]
        self.name = " ".join(urls)
        self.context_length = first.context_length
        self._turn = 0

    def count_tokens(self, text: str) -> int:
        return self.replicas[0].backend.count_tokens(text)

    def _pick(self, tried: set[int]) -> Replica | None:
        now = time.monotonic()
        healthy = [(r.inflight, r.calls, i) for i, r in enumerate(self.replicas)
                   if i not in tried and r.down_until <= now]
        return self.replicas[min(healthy)[2]] if healthy else None

    async def complete(self, request: ChatRequest, *, timeout: float | None = None) -> ChatResult:
        tried: set[int] = set()
        last: TransientError | None = None
        while (replica := self._pick(tried)) is not None:
            tried.add(self.replicas.index(replica))
            replica.inflight += 1
            try:
                result = await replica.backend.complete(request, timeout=timeout)
            except TransientError as e:
                self._failed(replica, e)
                last = e
                continue
            finally:
                replica.inflight -= 1
            replica.calls += 1
            replica.streak = 0
            replica.last_reason = None
            return result
        if last is None:  # every replica is backed off: wait for the first to come back
            if all(r.last_reason == "connection_refused" for r in self.replicas):
                raise ConnectionRefused(f"nothing listens at {self.name}")
            soonest = min(r.down_until for r in self.replicas) - time.monotonic()
            raise TransientError("replicas_down", "every replica is backed off",
                                 retry_after=max(soonest, 0.05))
        if isinstance(last, ConnectionRefused) and len(tried) == len(self.replicas):
            raise last  # nothing listens at any address: the engine's refused rule applies
        # retry_after would pause the engine's whole window, and a refused connection to
        # one replica while another is backed off is no reason to stop the run: the
        # replicas' own backoff spaces the calls, the engine retries this one after its delay
        raise TransientError(last.reason, last.detail)

    def _failed(self, replica: Replica, e: TransientError) -> None:
        replica.failures[e.reason] = replica.failures.get(e.reason, 0) + 1
        replica.streak += 1
        replica.last_error = str(e)[:200]
        replica.last_reason = e.reason
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (replica.streak - 1))
        if e.retry_after is not None:
            delay = min(BACKOFF_MAX, max(e.retry_after, 0.0))
        replica.down_until = time.monotonic() + delay

    def counts(self) -> list[dict[str, Any]]:
        return [r.counts() for r in self.replicas]

    async def aclose(self) -> None:
        for r in self.replicas:
            await r.backend.aclose()
