"""Recipients' state changes, written to the ledger in batches off the event loop.

Two commits per message on the event loop (``submitting``, then ``submitted``) were the sender's largest
cost after TLS (py-spy of bench/campaign_send.py). Changes are now queued in order and committed together
every INTERVAL, or at once when MAX_PENDING wait, in a worker thread. A sender killed before a batch is
committed loses at most those changes: each such recipient is then ``pending`` or ``submitting`` and is
sent again with the same Message-ID and idempotency key, which the MTA's fsynced idempotency log answers
with 250 and no second copy, the same argument that lets the ledger skip an fsync per commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .ledger import Change, Ledger, State

log = logging.getLogger(__name__)

INTERVAL = 0.05
MAX_PENDING = 500


class LedgerMarks:
    """The sender's queue of ledger changes for one campaign; `flush()` before reading counts that must be exact."""

    def __init__(self, ledger: Ledger, campaign: str, interval: float = INTERVAL) -> None:
        self.ledger = ledger
        self.campaign = campaign
        self.interval = interval
        self._pending: list[Change] = []
        self._wakeup = asyncio.Event()
        self._writing = asyncio.Lock()  # batches are committed in the order they were taken
        self._task: asyncio.Task[None] | None = None

    def add(self, recipient: str, state: State, reply: str | None = None) -> None:
        self._pending.append((recipient, state, reply))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ledger-marks")
        if len(self._pending) >= MAX_PENDING:
            self._wakeup.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self.interval)
            self._wakeup.clear()
            try:
                await self.flush()
            except Exception as exc:  # the database away for a moment: the changes stay queued
                log.warning("ledger changes not committed yet: %s", exc)

    async def flush(self) -> None:
        """Commit every change queued so far (raises what the database raised; the changes stay queued)."""
        async with self._writing:
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                await asyncio.to_thread(self.ledger.mark_many, self.campaign, batch)
            except BaseException:
                self._pending[:0] = batch
                raise

    async def close(self) -> None:
        """Stop the background writer and commit what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
