"""Level-based reconciliation without finalizers: one loop re-derives every object periodically.

Kopf's own timers put a finalizer on every object they run for, so deleting an object would
block whenever the operator is down. This loop asks each source (a kind's keys, from the
informers) every period and puts them on that kind's queue as background keys; the queues
coalesce them with events. A Ready SmtpServer is re-derived in full only every
FULL_RESYNC_SECONDS (its source filters with `SmtpServerController.wants_resync`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One kind's part in the resync: its keys now, and the queue they go on."""

    keys: Callable[[], Awaitable[list[Hashable]]]
    kick: Callable[[Hashable], None]
    """Puts a key on the kind's queue as a background key."""


class Resync:
    """Every `period` seconds, while this replica is active: `before` (the usage collection), then every key."""

    def __init__(self, sources: list[Source], paused: Callable[[], bool], period: float,
                 before: Callable[[], Awaitable[object]] | None = None) -> None:
        self.sources = sources
        self._paused = paused
        self.period = period
        self._before = before
        self._task: asyncio.Task[None] | None = None

    async def once(self, spread: float = 0.0) -> None:
        """Kick a background reconcile of every object of every source, spread over about `spread` seconds.

        Kicking everything at once queued a whole cluster's worth of reconciles in front of the
        next real change (a new server waited behind hundreds of no-op resyncs). Background kicks
        run only while no event-driven reconcile is due, a couple at a time (`Kicker.kick`).
        """
        kicks: list[tuple[Callable[[Hashable], None], Hashable]] = []
        for source in self.sources:
            kicks.extend((source.kick, key) for key in await source.keys())
        pause = spread / len(kicks) if kicks else 0.0
        for kick, key in kicks:
            kick(key)
            if pause:
                await asyncio.sleep(pause)

    async def _loop(self) -> None:
        was_paused = False
        while True:
            await asyncio.sleep(self.period)
            try:
                paused = self._paused()  # another replica is active; Kopf paused our handlers too
                if paused != was_paused:
                    log.info("resync %s", "paused: another replica is active" if paused
                             else "resumed: this replica is active")
                    was_paused = paused
                if paused:
                    continue
                if self._before is not None:
                    try:
                        await self._before()
                    except Exception:  # e.g. the pods cannot be listed: the tenants keep their last usage
                        log.exception("could not collect tenant usage")
                await self.once(spread=self.period / 2)
            except Exception:  # the API may be briefly unavailable; try again next period
                log.exception("resync failed")

    def start(self) -> None:
        """Start the loop (in the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def stop(self) -> None:
        """Stop it when the operator stops."""
        if self._task is not None:
            self._task.cancel()
