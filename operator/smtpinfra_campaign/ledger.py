"""The per-recipient ledger that makes a campaign exactly-once across crashes.

One row per (campaign uid, recipient): pending -> submitting -> submitted (or suppressed,
failed), plus invalid rows of the list (keyed by line). "submitting" is committed before the SMTP
transaction starts and "submitted" after the 250, so a sender killed in between re-sends that
recipient with the same Message-ID and idempotency key and the MTA's idempotency log answers 250
without sending it twice. SQLite (WAL, on the sender's volume) needs no server; PostgreSQL is
for platforms that run one. Both speak the same SQL through `SqlLedger`.

The ledger keeps no address: a recipient's row is keyed by the SHA-256 of its normalised address
(`h:<digest>`, the digest its idempotency key already carries), so a later campaign to a list that
still holds an erased address records only that digest. Erasure deletes the rows by the digest. A
ledger written before keys were hashed (rows but no `campaign_ledger_keys` mark) keeps plain keys,
so an upgraded sender resumes its campaign without sending anyone twice.

Commits survive the sender's process being killed, but are not forced to disk one by one
(SQLite `synchronous=NORMAL` in WAL mode, PostgreSQL `synchronous_commit=off`): an fsync per state
change capped the sender at a few dozen messages a second on a busy disk. What a power cut can lose
is the last state changes, which only makes a recipient go back to `pending`/`submitting`; it is
then sent again with the same Message-ID and idempotency key, which the MTA's fsynced idempotency
log answers with 250 and no second copy.
"""

from __future__ import annotations

import dataclasses
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse

from smtpinfra_mta.campaign_contract import address_digest, normalise_address


class State(StrEnum):
    PENDING = "pending"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    SUPPRESSED = "suppressed"
    INVALID = "invalid"
    FAILED = "failed"


FINAL = frozenset({State.SUBMITTED, State.SUPPRESSED, State.INVALID, State.FAILED})

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS campaign_ledger ("
    " campaign TEXT NOT NULL, recipient TEXT NOT NULL, row_number BIGINT NOT NULL, state TEXT NOT NULL,"
    " message_id TEXT NOT NULL, idempotency_key TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " reply TEXT, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (campaign, recipient))",
    "CREATE TABLE IF NOT EXISTS campaign_ledger_keys (mode TEXT NOT NULL)",
]
HASHED, PLAIN = "hashed", "plain"


@dataclass(frozen=True)
class Claim:
    """What the sender asks the ledger about one recipient of the list."""

    recipient: str
    """Normalised address, or `#<line>` for an invalid row."""
    row: int
    message_id: str
    idempotency_key: str
    reply: str | None = None
    """Why an invalid row was refused."""


@dataclass(frozen=True)
class Entry:
    recipient: str
    row: int
    state: State
    message_id: str
    idempotency_key: str
    attempts: int
    reply: str | None


Change = tuple[str, "State", str | None]
"""(recipient, new state, reply) of :meth:`Ledger.mark_many`."""


class Ledger(Protocol):
    def claim(self, campaign: str, claims: Sequence[Claim], state: State = State.PENDING) -> list[Entry]: ...
    def mark(self, campaign: str, recipient: str, state: State, reply: str | None = None) -> None: ...
    def mark_many(self, campaign: str, changes: Sequence[Change]) -> None: ...
    def counts(self, campaign: str) -> dict[State, int]: ...
    def entry(self, campaign: str, recipient: str) -> Entry | None: ...
    def invalid_rows(self, campaign: str, limit: int) -> list[tuple[int, str]]: ...
    def erase(self, address: str, campaigns: Sequence[str]) -> int: ...
    def close(self) -> None: ...


_T = TypeVar("_T")


def _locked(method: Callable[..., _T]) -> Callable[..., _T]:
    @functools.wraps(method)
    def wrapper(self: SqlLedger, *args: Any, **kw: Any) -> _T:
        with self.lock:
            return method(self, *args, **kw)
    return wrapper


class SqlLedger:
    """The ledger over a DB-API connection; `ph` is the driver's placeholder."""

    def __init__(self, conn: Any, ph: str) -> None:
        self.conn = conn
        self.ph = ph
        self.lock = threading.RLock()
        """One connection, used from the event loop and from worker threads, one method at a time."""
        for statement in _SCHEMA:
            self.conn.execute(statement)
        self.hashed = self._key_mode() == HASHED
        self.conn.commit()

    def _key_mode(self) -> str:
        cur = self.conn.cursor()
        cur.execute("SELECT mode FROM campaign_ledger_keys")
        row = cur.fetchone()
        if row is not None:
            return str(row[0])
        cur.execute("SELECT 1 FROM campaign_ledger LIMIT 1")
        mode = PLAIN if cur.fetchone() is not None else HASHED
        cur.execute(self._q("INSERT INTO campaign_ledger_keys (mode) VALUES (?)"), (mode,))
        return mode

    def _q(self, sql: str) -> str:
        return sql.replace("?", self.ph)

    def _key(self, recipient: str) -> str:
        """The row key of a recipient: `h:<digest>` (invalid rows keep their `#<line>`)."""
        if not self.hashed or recipient.startswith("#"):
            return recipient
        return "h:" + address_digest(recipient)

    @_locked
    def claim(self, campaign: str, claims: Sequence[Claim], state: State = State.PENDING) -> list[Entry]:
        """Record each recipient as `state` unless it is already there; return every row as stored now.

        One transaction per batch: the ledger write is not what limits the sender.
        """
        now = time.time()
        cur = self.conn.cursor()
        insert = self._q(
            "INSERT INTO campaign_ledger (campaign, recipient, row_number, state, message_id, idempotency_key,"
            " attempts, reply, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)"
            " ON CONFLICT (campaign, recipient) DO NOTHING")
        cur.executemany(insert, [(campaign, self._key(c.recipient), c.row, str(state), c.message_id,
                                  c.idempotency_key, c.reply, now, now) for c in claims])
        found: dict[str, Entry] = {}
        names = [self._key(c.recipient) for c in claims]
        for i in range(0, len(names), 500):
            chunk = names[i:i + 500]
            marks = ", ".join([self.ph] * len(chunk))
            cur.execute(self._q("SELECT recipient, row_number, state, message_id, idempotency_key, attempts, reply"
                                " FROM campaign_ledger WHERE campaign = ? AND recipient IN (") + marks + ")",
                        (campaign, *chunk))
            for r in cur.fetchall():
                found[r[0]] = Entry(r[0], int(r[1]), State(r[2]), r[3], r[4], int(r[5]), r[6])
        self.conn.commit()
        return [dataclasses.replace(found[n], recipient=c.recipient) for n, c in zip(names, claims, strict=True)]

    @_locked
    def mark(self, campaign: str, recipient: str, state: State, reply: str | None = None) -> None:
        """Move one recipient to `state` and commit; `submitting` counts an attempt."""
        bump = 1 if state is State.SUBMITTING else 0
        self.conn.execute(self._q("UPDATE campaign_ledger SET state = ?, reply = COALESCE(?, reply),"
                                  " attempts = attempts + ?, updated_at = ? WHERE campaign = ? AND recipient = ?"),
                          (str(state), reply, bump, time.time(), campaign, self._key(recipient)))
        self.conn.commit()

    @_locked
    def mark_many(self, campaign: str, changes: Sequence[Change]) -> None:
        """`mark` for several changes, in order, in one transaction (the sender's batches)."""
        now = time.time()
        cur = self.conn.cursor()
        cur.executemany(self._q("UPDATE campaign_ledger SET state = ?, reply = COALESCE(?, reply),"
                                " attempts = attempts + ?, updated_at = ? WHERE campaign = ? AND recipient = ?"),
                        [(str(state), reply, 1 if state is State.SUBMITTING else 0, now, campaign, self._key(r))
                         for r, state, reply in changes])
        self.conn.commit()

    @_locked
    def counts(self, campaign: str) -> dict[State, int]:
        cur = self.conn.cursor()
        cur.execute(self._q("SELECT state, COUNT(*) FROM campaign_ledger WHERE campaign = ? GROUP BY state"),
                    (campaign,))
        out = dict.fromkeys(State, 0)
        for state, n in cur.fetchall():
            out[State(state)] = int(n)
        self.conn.commit()
        return out

    @_locked
    def entry(self, campaign: str, recipient: str) -> Entry | None:
        cur = self.conn.cursor()
        cur.execute(self._q("SELECT recipient, row_number, state, message_id, idempotency_key, attempts, reply"
                            " FROM campaign_ledger WHERE campaign = ? AND recipient = ?"),
                    (campaign, self._key(recipient)))
        r = cur.fetchone()
        self.conn.commit()
        return None if r is None else Entry(recipient, int(r[1]), State(r[2]), r[3], r[4], int(r[5]), r[6])

    @_locked
    def invalid_rows(self, campaign: str, limit: int) -> list[tuple[int, str]]:
        cur = self.conn.cursor()
        cur.execute(self._q("SELECT row_number, reply FROM campaign_ledger WHERE campaign = ? AND state = ?"
                            " ORDER BY row_number LIMIT ?"), (campaign, str(State.INVALID), limit))
        rows = [(int(r[0]), str(r[1] or "")) for r in cur.fetchall()]
        self.conn.commit()
        return rows

    @_locked
    def erase(self, address: str, campaigns: Sequence[str]) -> int:
        """Remove an address from the ledgers of `campaigns` (uids; GDPR erasure of one tenant's
        recipient: a shared ledger also holds other tenants' campaigns, which are not its to erase).
        Returns the rows removed."""
        if not campaigns:
            return 0
        cur = self.conn.cursor()
        marks = ", ".join("?" * len(campaigns))
        cur.execute(self._q(f"DELETE FROM campaign_ledger WHERE recipient = ? AND campaign IN ({marks})"),
                    (self._key(normalise_address(address)), *campaigns))
        n = int(cur.rowcount or 0)
        self.conn.commit()
        if isinstance(self.conn, sqlite3.Connection):
            # The deleted rows' bytes must not stay in the WAL file (secure_delete zeroes them in the pages).
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n

    def close(self) -> None:
        self.conn.close()


def open_sqlite(path: Path) -> SqlLedger:
    """SQLite in WAL mode on the sender's volume (see the module docstring for `synchronous=NORMAL`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30, isolation_level="DEFERRED", check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA secure_delete=ON")  # an erased recipient's bytes are overwritten, not left in free pages
    return SqlLedger(conn, "?")


def open_postgres(dsn: str) -> SqlLedger:
    import psycopg

    conn = psycopg.connect(dsn)
    conn.execute("SET synchronous_commit = off")
    conn.commit()
    return SqlLedger(conn, "%s")


def open_ledger(url: str) -> SqlLedger:
    """`sqlite:////abs/path.db` or a `postgresql://` DSN."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        if not parsed.path or parsed.path == "/":
            raise ValueError(f"sqlite ledger URL needs a path: {url!r}")
        return open_sqlite(Path(parsed.path))
    if parsed.scheme in ("postgresql", "postgres"):
        return open_postgres(url)
    raise ValueError(f"unsupported ledger URL {url!r}: use sqlite:////path/ledger.db or postgresql://...")


def batched(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
