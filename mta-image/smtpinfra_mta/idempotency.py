"""Which idempotency keys were accepted, and which are being committed right now: one authority per replica.

A client that retries a submission (same ``X-Idempotency-Key`` or ``Message-ID``, same sender and
recipients) must get the first attempt's queue id back instead of a second copy, also when the two attempts
overlap. :class:`IdempotencyIndex` answers both questions in memory: accepted keys for the retention
period (rebuilt at start from the spool shards' ``idempotency.log`` files, which stay the durable record,
written in the same commit round as the message) and keys whose commit is under way (a future the second
attempt waits on).

With several receiving processes (:mod:`smtpinfra_mta.receivers`) the first process holds the one index;
the others ask it through :class:`Authority` before they commit and tell it how the commit ended.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Protocol

IdemKey = tuple[str, str]
"""(tenant, digest of the client's key, sender and recipients)."""


class CommitFailed(Exception):
    """The attempt being waited on did not commit (disk error, or its receiving process died)."""


class Authority(Protocol):
    """Where a receiving process claims a key before committing and settles it afterwards."""

    async def claim(self, key: IdemKey) -> str | None:
        """None: this caller commits the key now; else the queue id it was accepted as (a duplicate)."""
        ...

    def settle(self, key: IdemKey, msg_id: str | None, accepted_at: float) -> None:
        """The claimed commit ended: accepted as ``msg_id``, or (None) failed, so the key is free again."""
        ...


class IdempotencyIndex:
    """The in-memory index; also the :class:`Authority` of the process that holds it."""

    def __init__(self, retention: float) -> None:
        self.retention = retention
        self._accepted: dict[IdemKey, tuple[str, float]] = {}
        self._inflight: dict[IdemKey, asyncio.Future[str]] = {}

    def __len__(self) -> int:
        return len(self._accepted)

    def items(self) -> list[tuple[IdemKey, tuple[str, float]]]:
        return list(self._accepted.items())

    def clear(self) -> None:
        self._accepted.clear()

    def load(self, data: bytes, now: float | None = None) -> int:
        """Remember the accepted keys of an ``idempotency.log`` (JSON lines), skipping expired and torn ones."""
        now = time.time() if now is None else now
        loaded = 0
        for line in data.splitlines():
            try:
                tenant, key, msg_id, ts = json.loads(line)
                ts = float(ts)
            except (ValueError, TypeError):
                continue  # a torn last line from a crash before its flush: that commit was never acked
            if isinstance(tenant, str) and isinstance(key, str) and isinstance(msg_id, str) \
                    and now - ts < self.retention:
                self._accepted[(tenant, key)] = (msg_id, ts)
                loaded += 1
        return loaded

    def lookup(self, key: IdemKey) -> str | None:
        hit = self._accepted.get(key)
        if hit is None:
            return None
        if time.time() - hit[1] >= self.retention:
            del self._accepted[key]
            return None
        return hit[0]

    async def claim(self, key: IdemKey) -> str | None:
        existing = self.lookup(key)
        if existing is not None:
            return existing
        inflight = self._inflight.get(key)
        if inflight is not None:
            return await asyncio.shield(inflight)  # raises CommitFailed when that attempt failed
        self._inflight[key] = asyncio.get_running_loop().create_future()
        return None

    def settle(self, key: IdemKey, msg_id: str | None, accepted_at: float) -> None:
        inflight = self._inflight.pop(key, None)
        if msg_id is not None:
            self._accepted[key] = (msg_id, accepted_at)
        if inflight is None or inflight.done():
            return
        if msg_id is not None:
            inflight.set_result(msg_id)
        else:
            inflight.set_exception(CommitFailed("the first attempt with this idempotency key was not committed"))
            inflight.exception()  # mark retrieved: nobody may be waiting

    def claimed(self) -> list[IdemKey]:
        return list(self._inflight)
