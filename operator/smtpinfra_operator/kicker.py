"""Coalescing re-reconcile requests, and one lock per object.

A Tenant or IpPool change affects every SmtpServer that uses it; a burst of 1,000 Tenant
events must not turn into 1,000 reconciles of each server. `Kicker.kick(key)` marks a key
dirty; a small pool of workers reconciles each dirty key once, `delay` after its first kick,
however often it was kicked meanwhile. Keys are taken oldest first and a few at a time, so one
slow reconcile (or a resync of everything) does not hold up the rest. Timers still re-derive
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
    """Runs `reconcile(key)` soon, once per key per window, however often it is kicked.

    A failed reconcile is tried again a few times, a little later each time (RETRIES), before it
    is left to the next resync: Kopf retries its own handlers, and reconciles kicked here
    (by watch events, related objects, the resync) deserve the same.
    """

    RETRIES = 3
    RETRY_DELAY = 5.0

    def __init__(self, reconcile: Callable[[K], Awaitable[object]], delay: float = 0.3,
                 concurrency: int = 4) -> None:
        self._reconcile = reconcile
        self._delay = delay
        self._concurrency = concurrency
        self._pending: dict[K, float] = {}
        """Dirty keys → when they become due, in kick order."""
        self._failures: dict[K, int] = {}
        self._workers: set[asyncio.Task[None]] = set()

    def kick(self, key: K, delay: float | None = None) -> None:
        """Ask for `key` to be reconciled soon (after `delay`, default the kicker's window)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + (self._delay if delay is None else delay)
        if due < self._pending.get(key, due + 1):
            self._pending[key] = due
        if len(self._workers) < min(self._concurrency, len(self._pending)):
            task = loop.create_task(self._work())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    def pending(self) -> int:
        """How many keys wait for a reconcile."""
        return len(self._pending)

    def _next(self, now: float) -> tuple[K, float]:
        key, due = next(iter(self._pending.items()))
        if due > now:  # kicks with different delays: the oldest is not always the first due
            key, due = min(self._pending.items(), key=lambda item: item[1])
        return key, due

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            key, due = self._next(loop.time())
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            del self._pending[key]
            try:
                await self._reconcile(key)
            except Exception:  # one bad object must not stop the others
                failures = self._failures.get(key, 0) + 1
                if failures <= self.RETRIES:
                    self._failures[key] = failures
                    log.exception("reconcile of %s failed; trying again in %.0fs", key, self.RETRY_DELAY * failures)
                    self.kick(key, delay=self.RETRY_DELAY * failures)
                else:
                    self._failures.pop(key, None)
                    log.exception("reconcile of %s failed; the next resync tries again", key)
            else:
                self._failures.pop(key, None)


class Locks(Generic[K]):
    """One asyncio.Lock per key: reconciles of the same object never interleave."""

    def __init__(self) -> None:
        self._locks: defaultdict[K, asyncio.Lock] = defaultdict(asyncio.Lock)

    def __call__(self, key: K) -> asyncio.Lock:
        return self._locks[key]
