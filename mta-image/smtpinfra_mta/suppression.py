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
from collections.abc import Callable
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


Hasher = Callable[[str, str], str]
"""(tenant, normalised address) -> the ``sha256:<hex>`` form an erased address is kept in."""


def _forms(hasher: Hasher | None, tenant: str, address: str) -> tuple[str, str]:
    """The clear and the hashed form of an address (the clear one twice when no hasher is set)."""
    clear = normalise(address)
    return clear, hasher(tenant, clear) if hasher is not None else clear


class SuppressionStore(Protocol):
    hasher: Hasher | None

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def is_suppressed(self, tenant: str, address: str) -> bool: ...
    async def add(self, tenant: str, address: str, reason: str) -> None: ...
    async def remove(self, tenant: str, address: str) -> bool: ...
    async def entries(self, tenant: str) -> list[Entry]: ...
    async def erase(self, tenant: str, address: str) -> bool: ...


class SqliteStore:
    """Embedded store; one connection used from a worker thread (SQLite calls block)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hasher: Hasher | None = None
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
        await self._run("PRAGMA secure_delete=ON")  # an erased address must not linger in free pages
        await self._run(_SCHEMA)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def is_suppressed(self, tenant: str, address: str) -> bool:
        rows = await self._run("SELECT 1 FROM suppressions WHERE tenant=? AND address IN (?, ?) LIMIT 1",
                               (tenant, *_forms(self.hasher, tenant, address)))
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

    async def erase(self, tenant: str, address: str) -> bool:
        """Replace the clear entry by the hashed one (kept even if there was none); True if one was there.

        The write-ahead log is truncated afterwards so the clear address is in no file of the database.
        """
        clear, hashed = _forms(self.hasher, tenant, address)
        if hashed == clear:
            raise ValueError("erasure needs a hasher (the tenant's salt)")
        async with self._lock:
            return await asyncio.to_thread(self._erase, tenant, clear, hashed)

    def _erase(self, tenant: str, clear: str, hashed: str) -> bool:
        assert self._db is not None
        with self._db:
            self._db.execute("BEGIN")
            n = self._db.execute("DELETE FROM suppressions WHERE tenant=? AND address=?", (tenant, clear)).rowcount
            self._db.execute("INSERT INTO suppressions(tenant, address, reason, created_at) VALUES (?, ?, ?, ?)"
                             " ON CONFLICT(tenant, address) DO NOTHING", (tenant, hashed, "erased", time.time()))
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n > 0


class PostgresStore:
    """Shared store over psycopg 3 (async); one connection, serialised, reconnected on failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.hasher: Hasher | None = None
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
        _, rows = await self._run("SELECT 1 FROM suppressions WHERE tenant=%s AND address IN (%s, %s) LIMIT 1",
                                  (tenant, *_forms(self.hasher, tenant, address)))
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

    async def erase(self, tenant: str, address: str) -> bool:
        """Replace the clear entry by the hashed one in one statement; True if a clear entry was there."""
        clear, hashed = _forms(self.hasher, tenant, address)
        if hashed == clear:
            raise ValueError("erasure needs a hasher (the tenant's salt)")
        _, rows = await self._run(
            "WITH gone AS (DELETE FROM suppressions WHERE tenant=%s AND address=%s RETURNING 1),"
            " kept AS (INSERT INTO suppressions(tenant, address, reason, created_at) VALUES (%s, %s, 'erased', %s)"
            " ON CONFLICT (tenant, address) DO NOTHING RETURNING 1)"
            " SELECT (SELECT count(*) FROM gone)", (tenant, clear, tenant, hashed, time.time()))
        return bool(rows and rows[0][0])


def open_store(url: str) -> SuppressionStore:
    """``sqlite:///abs/path.db`` or ``postgresql://...`` / ``postgres://...``."""
    if url.startswith("sqlite:///"):
        return SqliteStore(Path("/" + url.removeprefix("sqlite:///").lstrip("/")))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise ValueError(f"unsupported suppression database URL {url.split(':', 1)[0]!r}: use sqlite:/// or postgresql://")
