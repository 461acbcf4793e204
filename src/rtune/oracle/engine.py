"""The async oracle engine: a sliding window of calls over any backend.

Calls are bounded by ``concurrency`` (not lock-step batches), rate-limited (RPM/TPM), retried
with exponential backoff + jitter that honours ``Retry-After``, and committed to the run store
before they count as done, so a rerun never pays twice for a finished call.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..endpoint_config import check_settings
from ..guided import NAMESPACE as GUIDED
from ..store import RunStore
from ..text import repair_text
from .base import (
    Backend,
    ChatRequest,
    ChatResult,
    ConnectionRefused,
    FatalError,
    PermanentError,
    TransientError,
)
from .pricing import Prices
from .ratelimit import RateLimiter

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# A refused connection is answered at once and means nothing listens at the address: a typo
# in the URL, a server not started yet, or one that died. Three quick retries (about 2 s in
# all) cover a listener that is just coming up; past that, every other call would be refused
# too, so the run stops with that message instead of backing off for a minute per call.
REFUSED_RETRIES = 3
REFUSED_BACKOFF = 0.25


@dataclass
class EngineConfig:
    concurrency: int = 16
    rpm: float | None = None
    tpm: float | None = None
    max_retries: int = 6
    timeout: float = 120.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    prices: Prices = field(default_factory=Prices)

    def __post_init__(self) -> None:
        check_settings(concurrency=self.concurrency, rpm=self.rpm, tpm=self.tpm,
                       timeout=self.timeout, max_retries=self.max_retries)


@dataclass
class EngineStats:
    calls: int = 0
    cached: int = 0
    retries: int = 0
    failures: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0


class Engine:
    def __init__(self, backend: Backend, store: RunStore | None = None,
                 config: EngineConfig | None = None,
                 on_call: Callable[[ChatResult], None] | None = None):
        self.backend = backend
        self.store = store
        self.config = config or EngineConfig()
        self.stats = EngineStats()
        self.on_call = on_call
        self._limiter = RateLimiter(self.config.rpm, self.config.tpm)
        self._semaphore: asyncio.Semaphore | None = None
        self._inflight: dict[str, asyncio.Future[ChatResult]] = {}
        self._paused_until = 0.0

    def _sem(self) -> asyncio.Semaphore:
        if self._semaphore is None:  # created inside the running loop
            self._semaphore = asyncio.Semaphore(self.config.concurrency)
        return self._semaphore

    def estimate_tokens(self, request: ChatRequest) -> int:
        text = "".join(m["content"] for m in request.messages)
        return self.backend.count_tokens(text) + 4 * len(request.messages) + request.max_tokens

    async def complete(self, request: ChatRequest, *, stage: str | None = None) -> ChatResult:
        """One call: from the store if already paid for, else through the backend."""
        key = request.key()
        if self.store is not None:
            hit = self.store.get_call(key)
            if hit is not None:
                self.stats.cached += 1
                guided = self.store.get_item(GUIDED, key) if request.guided else None
                return ChatResult(text=hit["text"], tokens_in=hit["tokens_in"],
                                  tokens_out=hit["tokens_out"], model=hit["model"],
                                  finish_reason=hit["finish_reason"], cached=True,
                                  extra={"guided": guided} if guided else {})
        if key in self._inflight:  # the same request already on its way: share it
            return await asyncio.shield(self._inflight[key])
        future: asyncio.Future[ChatResult] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._call_with_retries(request, key, stage)
            future.set_result(result)
            return result
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # mark retrieved: sharing callers re-raise it themselves
            raise
        finally:
            del self._inflight[key]

    async def _call_with_retries(self, request: ChatRequest, key: str,
                                 stage: str | None) -> ChatResult:
        attempt = 0
        while True:
            try:
                return await self._call_once(request, key, stage)
            except ConnectionRefused as e:
                attempt += 1
                if attempt > min(self.config.max_retries, REFUSED_RETRIES):
                    self._record_failure(key, stage, e.reason, str(e))
                    raise self._refused(e, attempt) from None
                self.stats.retries += 1
                await asyncio.sleep(REFUSED_BACKOFF * 2 ** (attempt - 1))
            except TransientError as e:
                attempt += 1
                if attempt > self.config.max_retries:
                    self._record_failure(key, stage, e.reason, str(e))
                    raise
                self.stats.retries += 1
                delay = self._backoff(attempt, e.retry_after)
                if e.retry_after is not None:  # the server asked everyone to slow down
                    self._paused_until = max(self._paused_until, time.monotonic() + delay)
                log.info("retry %d after %s in %.2fs", attempt, e.reason, delay)
                await asyncio.sleep(delay)
            except (PermanentError, FatalError) as e:
                self._record_failure(key, stage, e.reason, str(e))
                raise

    def _refused(self, e: ConnectionRefused, attempts: int) -> FatalError:
        return FatalError(e.reason, f"{e.detail} (connection refused, tried {attempts}x): "
                          "start the server or fix the address; finished calls are kept, "
                          "rerun to continue")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.config.backoff_max) + random.uniform(0, 0.1)
        ceiling = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)  # "equal jitter"

    async def _call_once(self, request: ChatRequest, key: str, stage: str | None) -> ChatResult:
        async with self._sem():
            pause = self._paused_until - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            estimate = self.estimate_tokens(request)
            await self._limiter.acquire(estimate)
            start = time.monotonic()
            try:
                call = self.backend.complete(request, timeout=self.config.timeout)
                # a local model queues requests behind running batches that cannot be
                # interrupted: a deadline there would count the queue, not the model
                result = await (call if getattr(self.backend, "runs_locally", False)
                                else asyncio.wait_for(call, self.config.timeout + 5))
            except asyncio.TimeoutError:
                self._limiter.settle(estimate, 0)
                raise TransientError("timeout", f"no reply in {self.config.timeout:g}s") from None
            result.latency = time.monotonic() - start
            self._limiter.settle(estimate, result.tokens_in + result.tokens_out)
        result.text, repaired = repair_text(result.text)  # before the parser and the store
        if repaired:
            result.extra["repaired"] = repaired
        model = result.model or request.model
        cost = self.config.prices.cost(model, result.tokens_in, result.tokens_out)
        if self.store is not None:
            self.store.put_call(key, model=model, stage=stage, request=request.payload(),
                                response=result.text, finish_reason=result.finish_reason,
                                tokens_in=result.tokens_in, tokens_out=result.tokens_out,
                                cost=cost, latency=result.latency)
            if result.extra.get("guided"):  # how this call was guided, or why it was not
                self.store.put_item(GUIDED, key, result.extra["guided"])
        s = self.stats
        s.calls += 1
        s.tokens_in += result.tokens_in
        s.tokens_out += result.tokens_out
        s.cost += cost
        result.extra["cost"] = cost
        if self.on_call:
            self.on_call(result)
        return result

    def _record_failure(self, key: str, stage: str | None, reason: str, detail: str) -> None:
        self.stats.failures += 1
        if self.store is not None:
            self.store.add_failure(key, stage, reason, detail[:500])

    async def map(self, fn: Callable[[T], Awaitable[R]], items: Iterable[T], *,
                  window: int | None = None) -> AsyncIterator[R]:
        """Run ``fn`` over ``items`` with a sliding window; yield results as they finish.

        Items are pulled lazily, so a million-record input never sits in memory at once.
        """
        window = window or max(2 * self.config.concurrency, 4)
        iterator = iter(items)
        pending: set[asyncio.Task[R]] = set()
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < window:
                    try:
                        item = next(iterator)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.add(asyncio.ensure_future(fn(item)))
                if not pending:
                    return
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:  # mark every error retrieved: the first one raised below
                    if not task.cancelled():  # ends the run, the rest would be logged at exit
                        task.exception()
                for task in done:
                    yield task.result()
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    def run(self, fn: Callable[[T], Awaitable[R]], items: Iterable[T], *,
            window: int | None = None) -> list[R]:
        """Synchronous wrapper around :meth:`map` (results in completion order)."""

        async def collect() -> list[R]:
            self._semaphore = None  # loop-bound primitives belong to this new loop
            self._limiter = RateLimiter(self.config.rpm, self.config.tpm)
            try:
                return [r async for r in self.map(fn, items, window=window)]
            finally:
                await self.backend.aclose()

        return asyncio.run(collect())

    def summary(self) -> dict[str, Any]:
        return dict(self.stats.__dict__)
