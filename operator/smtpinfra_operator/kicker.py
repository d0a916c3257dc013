"""Coalescing re-reconcile requests, and one lock per object.

A Tenant or IpPool change affects every SmtpServer that uses it; a burst of 1,000 Tenant
events must not turn into 1,000 reconciles of each server. `Kicker.kick(key)` marks a key
dirty; a worker reconciles each dirty key once per debounce window. Timers still re-derive
everything, so a lost kick only delays, never loses, a change.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class Kicker(Generic[K]):
    """Runs `reconcile(key)` soon, once per key per window, however often it is kicked."""

    def __init__(self, reconcile: Callable[[K], Awaitable[object]], delay: float = 0.3) -> None:
        self._reconcile = reconcile
        self._delay = delay
        self._pending: dict[K, None] = {}
        self._worker: asyncio.Task[None] | None = None

    def kick(self, key: K) -> None:
        """Ask for `key` to be reconciled soon."""
        self._pending[key] = None
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(self._delay)
            keys = list(self._pending)
            self._pending.clear()
            for key in keys:
                try:
                    await self._reconcile(key)
                except Exception:  # the timer will try again; one bad object must not stop the others
                    log.exception("reconcile of %s failed", key)


class Locks(Generic[K]):
    """One asyncio.Lock per key: reconciles of the same object never interleave."""

    def __init__(self) -> None:
        self._locks: defaultdict[K, asyncio.Lock] = defaultdict(asyncio.Lock)

    def __call__(self, key: K) -> asyncio.Lock:
        return self._locks[key]
