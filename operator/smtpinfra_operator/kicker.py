"""Coalescing re-reconcile requests, and one lock per object.

A Tenant or IpPool change affects every SmtpServer that uses it; a burst of 1,000 Tenant
events must not turn into 1,000 reconciles of each server. `Kicker.kick(key)` marks a key
dirty; a small pool of workers reconciles each dirty key once, `delay` after its first kick,
however often it was kicked meanwhile. Keys are taken oldest first and a few at a time, so one
slow reconcile (or a resync of everything) does not hold up the rest. Timers still re-derive
everything, so a lost kick only delays, never loses, a change.

Every key asks the peering gate before it runs: while another replica is active the key is
parked, not run and not dropped, and parked keys run as soon as this replica becomes active.
Whatever kicked it (Kopf's watch, an informer of children or pods, a related kind, the resync),
a paused replica makes no request on its behalf.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from smtpinfra_kube import Paused

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
Observer = Callable[[str, float | None], None]
"""Told of each key taken: (result ok|error|parked, seconds it ran or None)."""


def _never_paused() -> bool:
    return False


def _ignore(result: str, seconds: float | None) -> None:
    pass


def _wake(sleeper: asyncio.Future[None]) -> None:
    if not sleeper.done():
        sleeper.set_result(None)


class Kicker(Generic[K]):
    """Runs `reconcile(key)` soon, once per key per window, however often it is kicked.

    A failed reconcile is tried again a few times, a little later each time (RETRIES), before it
    is left to the next resync: Kopf retries its own handlers, and reconciles kicked here
    (by watch events, related objects, the resync) deserve the same.
    """

    RETRIES = 3
    RETRY_DELAY = 5.0
    BACKGROUND_CONCURRENCY = 2
    """Background reconciles (the periodic resync) in flight at once, whatever the concurrency."""

    PARKED_POLL = 1.0
    """How often parked keys ask the gate again (a look at memory, no request)."""

    def __init__(self, reconcile: Callable[[K], Awaitable[object]], delay: float = 0.3,
                 concurrency: int = 4, paused: Callable[[], bool] = _never_paused,
                 observe: Observer = _ignore) -> None:
        self._reconcile = reconcile
        self._paused = paused
        self._observe = observe
        self._parked: dict[K, None] = {}
        """Keys that came due while this replica was paused; they run when it is active."""
        self._unparker: asyncio.Task[None] | None = None
        self._delay = delay
        self._concurrency = concurrency
        self._pending: dict[K, float] = {}
        """Dirty keys → when they become due, in kick order."""
        self._background: dict[K, None] = {}
        """Keys to re-derive when nothing more urgent waits (the resync), in kick order."""
        self._background_running = 0
        self._failures: dict[K, int] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._sleepers: dict[asyncio.Future[None], float] = {}
        """Workers waiting for the earliest due key → when they wake by themselves."""

    def kick(self, key: K, delay: float | None = None, background: bool = False) -> None:
        """Ask for `key` to be reconciled soon (after `delay`, default the kicker's window).

        A `background` kick (the periodic resync) waits until no other kick is due and runs at most
        BACKGROUND_CONCURRENCY at a time: re-deriving 200 unchanged servers at once delayed a new
        server's first reconcile by seconds. A key kicked both ways is reconciled once, urgently.
        """
        loop = asyncio.get_running_loop()
        due = loop.time()
        if background:
            if key not in self._pending:
                self._background[key] = None
        else:
            self._background.pop(key, None)
            due += self._delay if delay is None else delay
            if due < self._pending.get(key, due + 1):
                self._pending[key] = due
        if not self._start_workers(loop):
            self._wake_one(due)

    def _start_workers(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Start workers up to what is wanted; whether any was started.

        A worker that found nothing to do has returned, but its done-callback forgets it only a turn of
        the loop later: counted as live, it left a key kicked in between with no worker at all.
        """
        self._workers -= {w for w in self._workers if w.done()}
        wanted = len(self._pending) + min(len(self._background), self.BACKGROUND_CONCURRENCY)
        started = False
        while len(self._workers) < min(self._concurrency, wanted):
            task = loop.create_task(self._work())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
            started = True
        return started

    def _wake_one(self, due: float) -> None:
        """A key became due sooner than every idle worker would wake: wake one to take it.

        Without this, a pod's Ready (kicked with 50 ms) waited behind the same key's earlier kick
        with a two-second delay until some other kick happened to start a worker.
        """
        for sleeper, until in self._sleepers.items():
            if until > due and not sleeper.done():
                _wake(sleeper)
                return

    def pending(self) -> int:
        """How many keys wait for a reconcile (parked ones included)."""
        return len(self._pending) + len(self._background) + len(self._parked)

    def parked(self) -> int:
        """How many keys wait for this replica to become active."""
        return len(self._parked)

    def _park(self, key: K) -> None:
        if not self._parked:
            log.info("reconciles wait: another replica of the peering is active (first: %s)", key)
        elif key not in self._parked:  # a standby parks every object each resync: one INFO line is enough
            log.debug("reconcile of %s waits for the active replica", key)
        self._parked[key] = None
        if self._unparker is None or self._unparker.done():
            self._unparker = asyncio.get_running_loop().create_task(self._unpark())

    async def _unpark(self) -> None:
        while self._parked:
            await asyncio.sleep(self.PARKED_POLL)
            if not self._paused():
                keys, self._parked = list(self._parked), {}
                for key in keys:
                    self.kick(key, delay=0.0)

    def _next(self, now: float) -> tuple[K, float]:
        key, due = next(iter(self._pending.items()))
        if due > now:  # kicks with different delays: the oldest is not always the first due
            key, due = min(self._pending.items(), key=lambda item: item[1])
        return key, due

    def _take_background(self) -> K | None:
        if self._background and self._background_running < self.BACKGROUND_CONCURRENCY:
            key = next(iter(self._background))
            del self._background[key]
            return key
        return None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait: float | None = None
            if self._pending:
                key, due = self._next(loop.time())
                wait = due - loop.time()
                if wait <= 0:
                    del self._pending[key]
                    await self._run(key)
                    continue
            background = self._take_background()  # only while no kick is due
            if background is not None:
                self._background_running += 1
                try:
                    await self._run(background)
                finally:
                    self._background_running -= 1
                continue
            if wait is None:
                return
            await self._sleep(loop, wait)

    async def _sleep(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        """Sleep until `seconds` have passed or a kick wakes this worker for a sooner key (`_wake_one`)."""
        sleeper: asyncio.Future[None] = loop.create_future()
        self._sleepers[sleeper] = loop.time() + seconds
        timer = loop.call_later(seconds, _wake, sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            del self._sleepers[sleeper]

    async def _run(self, key: K) -> None:
        if self._paused():
            self._observe("parked", None)
            self._park(key)
            return
        started = time.perf_counter()
        try:
            await self._reconcile(key)
        except Paused:  # the gate closed while it ran: the rest waits for this replica's turn
            self._observe("parked", time.perf_counter() - started)
            self._park(key)
        except Exception:  # one bad object must not stop the others
            self._observe("error", time.perf_counter() - started)
            failures = self._failures.get(key, 0) + 1
            if failures <= self.RETRIES:
                self._failures[key] = failures
                log.exception("reconcile of %s failed; trying again in %.0fs", key, self.RETRY_DELAY * failures)
                self.kick(key, delay=self.RETRY_DELAY * failures)
            else:
                self._failures.pop(key, None)
                log.exception("reconcile of %s failed; the next resync tries again", key)
        else:
            self._observe("ok", time.perf_counter() - started)
            self._failures.pop(key, None)


class Locks(Generic[K]):
    """One asyncio.Lock per key: reconciles of the same object never interleave."""

    def __init__(self) -> None:
        self._locks: defaultdict[K, asyncio.Lock] = defaultdict(asyncio.Lock)

    def __call__(self, key: K) -> asyncio.Lock:
        return self._locks[key]
