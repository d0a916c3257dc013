"""Pacing: a token bucket for `spec.rate.messagesPerMinute`.

The clock and the sleep are injected so the unit tests drive time themselves; the bucket holds
at most one second of tokens, so a paused or slow period never turns into a burst afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class TokenBucket:
    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if per_minute < 1:
            raise ValueError("rate must be at least one message per minute")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.clock = clock
        self.sleep = sleep
        self.tokens = 1.0
        self.updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait_time(self) -> float:
        """Seconds until one token is available (0 when one is)."""
        self._refill()
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    async def take(self) -> None:
        """Wait for and take one token; callers are served in order."""
        async with self._lock:
            while (delay := self.wait_time()) > 0:
                await self.sleep(delay)
            self.tokens -= 1.0
