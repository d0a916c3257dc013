"""Windowed counters (per UTC hour / per UTC day) that survive restarts.

Used for tenant quotas and warm-up caps: a cap that reset on every pod restart would let a crash loop
blow through an IP's warm-up plan, so counts live in SQLite inside the spool volume.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Literal

Window = Literal["hour", "day"]


def window_id(window: Window, now: float | None = None) -> str:
    """The UTC clock window containing ``now``: '2026-11-26T04' for hours, '2026-11-26' for days."""
    t = time.gmtime(time.time() if now is None else now)
    return time.strftime("%Y-%m-%dT%H" if window == "hour" else "%Y-%m-%d", t)


def seconds_to_next_window(window: Window, now: float | None = None) -> float:
    now = time.time() if now is None else now
    size = 3600 if window == "hour" else 86400
    return size - (now % size)


class Counters:
    """A write-through cache over a small SQLite table; one instance per process.

    ``cache=False`` when other processes reserve in the same file (several receiving processes): then every
    read goes to the file, since a cached figure would miss their reservations and releases.
    """

    def __init__(self, path: Path | None, *, cache: bool = True) -> None:
        self._use_cache = cache
        self._db = sqlite3.connect(":memory:" if path is None else str(path), isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS counters (key TEXT NOT NULL, win TEXT NOT NULL, n INTEGER NOT NULL,"
            " PRIMARY KEY (key, win))"
        )
        self._cache: dict[tuple[str, str], int] = {}
        self._prune()

    def _prune(self) -> None:
        today = window_id("day")
        yesterday = window_id("day", time.time() - 86400)
        self._db.execute("DELETE FROM counters WHERE substr(win, 1, 10) NOT IN (?, ?)", (today, yesterday))

    def get(self, key: str, window: Window, now: float | None = None) -> int:
        win = window_id(window, now)
        hit = self._cache.get((key, win))
        if hit is not None:
            return hit
        row = self._db.execute("SELECT n FROM counters WHERE key=? AND win=?", (key, win)).fetchone()
        n = int(row[0]) if row else 0
        if self._use_cache:
            self._cache[(key, win)] = n
        return n

    def add(self, key: str, n: int = 1, now: float | None = None) -> None:
        """Count ``n`` events in both the current hour and the current day."""
        windows: tuple[Window, Window] = ("hour", "day")
        for window in windows:
            win = window_id(window, now)
            if self._use_cache:
                self._cache[(key, win)] = self.get(key, window, now) + n
            self._db.execute(
                "INSERT INTO counters(key, win, n) VALUES (?, ?, ?)"
                " ON CONFLICT(key, win) DO UPDATE SET n = n + excluded.n",
                (key, win, n),
            )
        if len(self._cache) > 100_000:
            self._cache.clear()

    def reserve(self, key: str, n: int, caps: dict[Window, int | None],
                now: float | None = None) -> tuple[Window | None, dict[Window, str]]:
        """Count ``n`` events only if every capped window stays within its cap; atomic across processes.

        Returns (the first window that would overflow, or None) and, on success, the window ids counted
        in, which :meth:`release` needs to take the reservation back after a failed commit. The read and
        the write happen in one ``BEGIN IMMEDIATE`` transaction, so concurrent sessions (and several
        processes sharing the file) can never both pass a check that only one of them fits.
        """
        wins: dict[Window, str] = {"hour": window_id("hour", now), "day": window_id("day", now)}
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for window, cap in caps.items():
                if cap is None:
                    continue
                row = self._db.execute("SELECT n FROM counters WHERE key=? AND win=?", (key, wins[window])).fetchone()
                if (int(row[0]) if row else 0) + n > cap:
                    self._db.execute("ROLLBACK")
                    return window, {}
            for win in wins.values():
                self._db.execute(
                    "INSERT INTO counters(key, win, n) VALUES (?, ?, ?)"
                    " ON CONFLICT(key, win) DO UPDATE SET n = n + excluded.n",
                    (key, win, n),
                )
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        for win in wins.values():
            self._cache.pop((key, win), None)
        return None, wins

    def release(self, key: str, n: int, wins: dict[Window, str]) -> None:
        """Take back a reservation made by :meth:`reserve` (the message was not accepted after all)."""
        for win in wins.values():
            self._db.execute("UPDATE counters SET n = max(n - ?, 0) WHERE key=? AND win=?", (n, key, win))
            self._cache.pop((key, win), None)

    def close(self) -> None:
        self._db.close()
