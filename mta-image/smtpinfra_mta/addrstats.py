"""Per source address x provider x day (and hour) delivery figures, persisted in the spool.

The operator's warm-up gates and today's caps are computed from these figures, so they must survive
a pod restart (a restart must not reset today's count, or a crash loop would blow through a warm-up
plan) and they are what /stats reports under "addresses". Days are calendar days in the configured
time zone; days older than :data:`RETENTION_DAYS` are dropped. Complaints and asynchronous bounces
arrive days later through the inbound listener: they are attributed to the address that last sent to
the recipient, remembered here for the same retention.

Durability: a "sent" count is committed before the message leaves (a crash never lets an address send
uncounted). Outcomes (delivered, deferred, bounced, complained) are figures, not caps: they ride along
with the next "sent" transaction, or are committed OUTCOME_DELAY after they happened when nothing is
being sent, so a message costs one commit instead of two; a crash loses at most that delay's outcomes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from smtpinfra_mta.clock import Clock, day_offset, window_id

RETENTION_DAYS = 45
OUTCOME_DELAY = 0.2
KNOWN_PROVIDERS = ("gmail", "yahoo", "microsoft", "apple", "comcast")
FIELDS = ("sent", "delivered", "deferred", "bounced", "complained")
Field = Literal["sent", "delivered", "deferred", "bounced", "complained"]


def provider_label(provider: str | None) -> str:
    """The provider name /stats uses: one of :data:`KNOWN_PROVIDERS`, else "other"."""
    return provider if provider in KNOWN_PROVIDERS else "other"


class AddressStats:
    """A write-through cache over three small SQLite tables in the spool volume; one per delivering process."""

    def __init__(self, path: Path | None, clock: Clock, tz: ZoneInfo) -> None:
        self.clock = clock
        self.tz = tz
        self._db = sqlite3.connect(":memory:" if path is None else str(path), isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS days (address TEXT NOT NULL, provider TEXT NOT NULL, day TEXT NOT NULL,"
            " sent INTEGER NOT NULL DEFAULT 0, delivered INTEGER NOT NULL DEFAULT 0,"
            " deferred INTEGER NOT NULL DEFAULT 0, bounced INTEGER NOT NULL DEFAULT 0,"
            " complained INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (address, provider, day))")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS hours (address TEXT NOT NULL, provider TEXT NOT NULL, hour TEXT NOT NULL,"
            " sent INTEGER NOT NULL, PRIMARY KEY (address, provider, hour))")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS recipients (rcpt TEXT PRIMARY KEY, address TEXT NOT NULL,"
            " provider TEXT NOT NULL, day TEXT NOT NULL)")
        # (address, provider, day) -> [sent, delivered, deferred, bounced, complained]; loaded whole at start
        self._days: dict[tuple[str, str, str], list[int]] = {}
        self._hours: dict[tuple[str, str, str], int] = {}
        self._day_sent: dict[tuple[str, str], int] = defaultdict(int)  # (address, day): all providers
        self._hour_sent: dict[tuple[str, str], int] = defaultdict(int)  # (address, hour): all providers
        self._pruned_day = ""
        self._deferred: list[tuple[str, Any]] = []  # outcome statements not committed yet
        self._flush_timer: asyncio.TimerHandle | None = None
        self.prune()
        for row in self._db.execute("SELECT address, provider, day, sent, delivered, deferred, bounced, complained"
                                    " FROM days"):
            self._days[(row[0], row[1], row[2])] = [int(x) for x in row[3:]]
            self._day_sent[(row[0], row[2])] += int(row[3])
        for address, provider, hour, sent in self._db.execute("SELECT address, provider, hour, sent FROM hours"):
            self._hours[(address, provider, hour)] = int(sent)
            self._hour_sent[(address, hour)] += int(sent)

    # ------------------------------------------------------------------ windows

    def today(self, now: float | None = None) -> str:
        return window_id("day", self.clock.now() if now is None else now, self.tz)

    def this_hour(self, now: float | None = None) -> str:
        return window_id("hour", self.clock.now() if now is None else now, self.tz)

    # ------------------------------------------------------------------ recording

    def add(self, address: str, provider: str | None, field: Field, n: int = 1, *,
            rcpts: list[str] | None = None, now: float | None = None) -> None:
        """Count ``n`` events; "sent" also counts in the hour and remembers who sent to ``rcpts``."""
        if field not in FIELDS:
            raise ValueError(f"unknown figure {field!r}")
        if n <= 0:
            return
        name = provider or "other"
        now = self.clock.now() if now is None else now
        day = self.today(now)
        if day != self._pruned_day:
            self.prune(now)
        row = self._days.setdefault((address, name, day), [0, 0, 0, 0, 0])
        row[FIELDS.index(field)] += n
        statements: list[tuple[str, Any]] = [(  # field is one of FIELDS (checked above), never outside input
            f"INSERT INTO days(address, provider, day, {field}) VALUES (?, ?, ?, ?)"
            f" ON CONFLICT(address, provider, day) DO UPDATE SET {field} = {field} + excluded.{field}",
            (address, name, day, n))]
        if field == "sent":
            hour = self.this_hour(now)
            self._day_sent[(address, day)] += n
            self._hour_sent[(address, hour)] += n
            self._hours[(address, name, hour)] = self._hours.get((address, name, hour), 0) + n
            statements.append((
                "INSERT INTO hours(address, provider, hour, sent) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(address, provider, hour) DO UPDATE SET sent = sent + excluded.sent",
                (address, name, hour, n)))
        if field != "sent" and self._defer(statements):
            return
        # One transaction per "sent", with the outcomes since the last one; never half counted.
        statements = [*self._deferred, *statements]
        self._deferred = []
        self._db.execute("BEGIN")
        try:
            for sql, params in statements:
                self._db.execute(sql, params)
            if field == "sent" and rcpts:
                self._db.executemany(
                    "INSERT INTO recipients(rcpt, address, provider, day) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT(rcpt) DO UPDATE SET address = excluded.address, provider = excluded.provider,"
                    " day = excluded.day", [(r.lower(), address, name, day) for r in rcpts])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _defer(self, statements: list[tuple[str, Any]]) -> bool:
        """Queue outcome statements for the next commit (False outside an event loop: commit now)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._deferred.extend(statements)
        if self._flush_timer is None:
            self._flush_timer = loop.call_later(OUTCOME_DELAY, self.flush)
        return True

    def flush(self) -> None:
        """Commit the queued outcome statements now."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        statements, self._deferred = self._deferred, []
        if not statements:
            return
        self._db.execute("BEGIN")
        try:
            for sql, params in statements:
                self._db.execute(sql, params)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def attribute(self, rcpt: str, field: Field, now: float | None = None) -> bool:
        """Count a late report (complaint, asynchronous bounce) for the address that last sent to ``rcpt``.

        Counted on the day the report arrives, the day the receiver's verdict became known. False when
        no address of this process sent to the recipient within the retention.
        """
        row = self._db.execute("SELECT address, provider FROM recipients WHERE rcpt = ?", (rcpt.lower(),)).fetchone()
        if row is None:
            return False
        self.add(row[0], row[1], field, 1, now=now)
        return True

    # ------------------------------------------------------------------ reading

    def sent(self, address: str, provider: str | None, window: Literal["hour", "day"],
             now: float | None = None) -> int:
        """Messages sent from ``address`` in the current window, to ``provider`` (None: to every provider)."""
        now = self.clock.now() if now is None else now
        if window == "day":
            day = self.today(now)
            if provider is not None:
                return self._days.get((address, provider, day), [0])[0]
            return self._day_sent.get((address, day), 0)
        hour = self.this_hour(now)
        if provider is not None:
            return self._hours.get((address, provider, hour), 0)
        return self._hour_sent.get((address, hour), 0)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """The /stats "addresses" part: days within the retention, and the hours of the current day."""
        now = self.clock.now() if now is None else now
        oldest = day_offset(self.today(now), -RETENTION_DAYS)
        today = self.today(now)
        out: dict[str, Any] = defaultdict(lambda: {"days": {}, "hour": {}})
        for (address, provider, day), values in sorted(self._days.items()):
            if day < oldest:
                continue
            per = out[address]["days"].setdefault(day, {}).setdefault(provider_label(provider),
                                                                       dict.fromkeys(FIELDS, 0))
            for name, v in zip(FIELDS, values, strict=True):
                per[name] += v
        for (address, provider, hour), sent in sorted(self._hours.items()):
            if not hour.startswith(today):
                continue
            per = out[address]["hour"].setdefault(hour, {}).setdefault(provider_label(provider), {"sent": 0})
            per["sent"] += sent
        return dict(out)

    # ------------------------------------------------------------------ housekeeping

    def prune(self, now: float | None = None) -> None:
        """Drop days older than the retention and hours before yesterday."""
        today = self.today(now)
        self._pruned_day = today
        oldest = day_offset(today, -RETENTION_DAYS)
        yesterday = day_offset(today, -1)
        self._db.execute("DELETE FROM days WHERE day < ?", (oldest,))
        self._db.execute("DELETE FROM recipients WHERE day < ?", (oldest,))
        self._db.execute("DELETE FROM hours WHERE substr(hour, 1, 10) < ?", (yesterday,))
        self._days = {k: v for k, v in self._days.items() if k[2] >= oldest}
        self._hours = {k: v for k, v in self._hours.items() if k[2][:10] >= yesterday}
        self._day_sent = defaultdict(int, {k: v for k, v in self._day_sent.items() if k[1] >= oldest})
        self._hour_sent = defaultdict(int, {k: v for k, v in self._hour_sent.items() if k[1][:10] >= yesterday})

    def close(self) -> None:
        self.flush()
        self._db.close()
