"""Quota counters shared by all replicas in PostgreSQL: one exact authority when a database is configured.

Each reservation locks the tenant's hour and day rows (always in that order, so two reservations never
deadlock), checks both against the whole quota and adds to both in one transaction: replicas together
never accept more than the quota (overshoot 0), and unlike per-replica shares no replica turns a client
away while another still has room. When the database cannot be reached the reservation fails and the
client gets a temporary 451, so nothing is accepted uncounted. Credentials come from libpq's usual
sources (PGPASSWORD, PGPASSFILE, the URL), as for the suppression store.
"""

from __future__ import annotations

import asyncio
from typing import Any

from smtpinfra_mta.counters import Window, window_id

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS quota_counters ("
    " key TEXT NOT NULL, win TEXT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (key, win))"
)


class QuotaStoreError(Exception):
    """The shared counter store could not be used; the caller answers with a temporary failure."""


class PostgresQuotas:
    """Reservations against the shared counters over psycopg 3 (async); one connection, serialised."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        return self._conn

    async def open(self) -> None:
        import psycopg

        try:
            conn = await self._connect()
            await conn.execute(_SCHEMA)
        except psycopg.Error as exc:
            raise QuotaStoreError(str(exc)) from None

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def reserve(self, key: str, n: int, caps: dict[Window, int | None],
                      now: float | None = None) -> tuple[Window | None, dict[Window, str]]:
        """Like :meth:`Counters.reserve`, across every replica using the database."""
        import psycopg

        wins: dict[Window, str] = {"hour": window_id("hour", now), "day": window_id("day", now)}
        async with self._lock:
            try:
                conn = await self._connect()
                async with conn.transaction():
                    for window in ("hour", "day"):
                        await conn.execute("INSERT INTO quota_counters(key, win, n) VALUES (%s, %s, 0)"
                                           " ON CONFLICT (key, win) DO NOTHING", (key, wins[window]))
                        cur = await conn.execute("SELECT n FROM quota_counters WHERE key=%s AND win=%s FOR UPDATE",
                                                 (key, wins[window]))
                        row = await cur.fetchone()
                        cap = caps.get(window)
                        if cap is not None and int(row[0]) + n > cap:
                            raise _Over(window)
                    for win in wins.values():
                        await conn.execute("UPDATE quota_counters SET n = n + %s WHERE key=%s AND win=%s",
                                           (n, key, win))
            except _Over as over:
                return over.window, {}
            except psycopg.Error as exc:
                self._conn = None
                raise QuotaStoreError(str(exc)) from None
        return None, wins

    async def release(self, key: str, n: int, wins: dict[Window, str]) -> None:
        import psycopg

        async with self._lock:
            try:
                conn = await self._connect()
                for win in wins.values():
                    await conn.execute("UPDATE quota_counters SET n = GREATEST(n - %s, 0) WHERE key=%s AND win=%s",
                                       (n, key, win))
            except psycopg.Error as exc:
                self._conn = None
                raise QuotaStoreError(str(exc)) from None


class _Over(Exception):
    def __init__(self, window: Window) -> None:
        super().__init__(window)
        self.window = window
