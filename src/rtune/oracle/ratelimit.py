"""Requests-per-minute and tokens-per-minute limits as continuous token buckets."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Holds up to ``per_minute`` units, refilled continuously; ``acquire(n)`` waits for n."""

    def __init__(self, per_minute: float):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    async def acquire(self, amount: float = 1.0) -> None:
        amount = min(amount, self.capacity)  # a request bigger than a minute's budget still runs
        async with self._lock:
            while True:
                self._refill()
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)

    def refund(self, amount: float) -> None:
        """Give back what was reserved but not used (e.g. max_tokens beyond the real output)."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """RPM and TPM together; either may be None (unlimited)."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None):
        self.requests = TokenBucket(rpm) if rpm else None
        self.tokens = TokenBucket(tpm) if tpm else None

    async def acquire(self, estimated_tokens: int) -> None:
        if self.requests:
            await self.requests.acquire(1)
        if self.tokens:
            await self.tokens.acquire(estimated_tokens)

    def settle(self, estimated_tokens: int, used_tokens: int) -> None:
        if self.tokens and used_tokens < estimated_tokens:
            self.tokens.refund(estimated_tokens - used_tokens)
