"""Per-tenant suppression lists in a real database: SQLite (embedded default) or PostgreSQL.

Recipients on a tenant's list are not delivered (recorded as "suppressed"). Hard bounces and
complaints add entries automatically; the operator or a tenant API can add/remove entries too.
PostgreSQL is for several replicas sharing one list; credentials come from libpq's usual sources
(PGPASSWORD, PGPASSFILE, the URL), never from the config file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS suppressions ("
    " tenant TEXT NOT NULL, address TEXT NOT NULL, reason TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (tenant, address))"
)


def normalise(address: str) -> str:
    return address.strip().lower()


@dataclass(frozen=True)
class Entry:
    tenant: str
    address: str
    reason: str
    created_at: float


class SuppressionStore(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def is_suppressed(self, tenant: str, address: str) -> bool: ...
    async def add(self, tenant: str, address: str, reason: str) -> None: ...
    async def remove(self, tenant: str, address: str) -> bool: ...
    async def entries(self, tenant: str) -> list[Entry]: ...


class SqliteStore:
    """Embedded store; one connection used from a worker thread (SQLite calls block)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        async with self._lock:
            return await asyncio.to_thread(self._exec, sql, args)

    def _exec(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        assert self._db is not None
        cur = self._db.execute(sql, args)
        rows = cur.fetchall()
        if cur.rowcount >= 0 and not rows:
            return [cur.rowcount]
        return rows

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        await self._run("PRAGMA journal_mode=WAL")
        await self._run(_SCHEMA)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def is_suppressed(self, tenant: str, address: str) -> bool:
        rows = await self._run("SELECT 1 FROM suppressions WHERE tenant=? AND address=?", (tenant, normalise(address)))
        return bool(rows) and rows[0] == (1,)

    async def add(self, tenant: str, address: str, reason: str) -> None:
        await self._run(
            "INSERT INTO suppressions(tenant, address, reason, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(tenant, address) DO NOTHING", (tenant, normalise(address), reason, time.time()))

    async def remove(self, tenant: str, address: str) -> bool:
        rows = await self._run("DELETE FROM suppressions WHERE tenant=? AND address=?", (tenant, normalise(address)))
        return bool(rows and rows[0] == 1)

    async def entries(self, tenant: str) -> list[Entry]:
        rows = await self._run("SELECT tenant, address, reason, created_at FROM suppressions WHERE tenant=?"
                               " ORDER BY address", (tenant,))
        return [Entry(*r) for r in rows if isinstance(r, tuple)]


class PostgresStore:
    """Shared store over psycopg 3 (async); one connection, serialised, reconnected on failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        return self._conn

    async def _run(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[int, list[Any]]:
        import psycopg

        async with self._lock:
            for attempt in (1, 2):
                conn = await self._connect()
                try:
                    cur = await conn.execute(sql, args)
                    rows = await cur.fetchall() if cur.description else []
                    return cur.rowcount, rows
                except psycopg.OperationalError:
                    self._conn = None
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    async def open(self) -> None:
        await self._run(_SCHEMA)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def is_suppressed(self, tenant: str, address: str) -> bool:
        _, rows = await self._run("SELECT 1 FROM suppressions WHERE tenant=%s AND address=%s",
                                  (tenant, normalise(address)))
        return bool(rows)

    async def add(self, tenant: str, address: str, reason: str) -> None:
        await self._run(
            "INSERT INTO suppressions(tenant, address, reason, created_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (tenant, address) DO NOTHING", (tenant, normalise(address), reason, time.time()))

    async def remove(self, tenant: str, address: str) -> bool:
        n, _ = await self._run("DELETE FROM suppressions WHERE tenant=%s AND address=%s",
                               (tenant, normalise(address)))
        return bool(n == 1)

    async def entries(self, tenant: str) -> list[Entry]:
        _, rows = await self._run("SELECT tenant, address, reason, created_at FROM suppressions WHERE tenant=%s"
                                  " ORDER BY address", (tenant,))
        return [Entry(*r) for r in rows]


def open_store(url: str) -> SuppressionStore:
    """``sqlite:///abs/path.db`` or ``postgresql://...`` / ``postgres://...``."""
    if url.startswith("sqlite:///"):
        return SqliteStore(Path("/" + url.removeprefix("sqlite:///").lstrip("/")))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise ValueError(f"unsupported suppression database URL {url.split(':', 1)[0]!r}: use sqlite:/// or postgresql://")
