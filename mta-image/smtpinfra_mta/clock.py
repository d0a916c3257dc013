"""The one clock the MTA reads for day/hour boundaries and warm-up caps.

Production reads the system clock. A test sets ``SMTP_INFRA_FAKE_TIME_FILE`` to a file holding an ISO
timestamp or epoch seconds, and the MTA follows that file (re-read at most once a second), so a
45-day warm-up plan runs in seconds. Windows are calendar hours and days in the configured IANA time
zone, because "N messages a day" means the receiver's and the operator's day, not a rolling 24 h.
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

FAKE_TIME_ENV = "SMTP_INFRA_FAKE_TIME_FILE"

Window = Literal["hour", "day"]


class Clock(Protocol):
    """Wall-clock time in epoch seconds, and how soon a time-based wait should be checked again."""

    def now(self) -> float: ...

    def recheck(self, wait: float) -> float:
        """How long to really sleep before re-evaluating something that becomes possible in ``wait``."""
        ...


class SystemClock:
    """The host's clock."""

    def now(self) -> float:
        return time.time()

    def recheck(self, wait: float) -> float:
        return max(wait, 0.0)


def parse_time(text: str) -> float:
    """Epoch seconds from ``text``: a number of seconds or an ISO 8601 timestamp (naive means UTC)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


class FileClock:
    """A test clock: the time written in a file, re-read at most once a second (by the monotonic clock).

    While the file is unreadable or malformed the last good value is kept (the system time before the
    first one), so a test rewriting the file never makes the MTA see time jump to an odd value.
    """

    def __init__(self, path: Path, reread: float = 1.0) -> None:
        self.path = path
        self._reread = reread
        self._value = time.time()
        self._read_at = -reread

    def now(self) -> float:
        mono = time.monotonic()
        if mono - self._read_at >= self._reread:
            self._read_at = mono
            with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
                self._value = parse_time(self.path.read_text(encoding="ascii"))
        return self._value

    def recheck(self, wait: float) -> float:
        # The file can jump forward at any moment: look again soon instead of sleeping the (fake) wait.
        return min(max(wait, 0.0), self._reread)


def clock_from_env(environ: dict[str, str] | None = None) -> Clock:
    """The file clock when ``SMTP_INFRA_FAKE_TIME_FILE`` is set, else the system clock."""
    env = os.environ if environ is None else environ
    path = env.get(FAKE_TIME_ENV)
    return FileClock(Path(path)) if path else SystemClock()


def window_id(window: Window, now: float, tz: ZoneInfo) -> str:
    """'YYYY-MM-DDTHH' (hour) or 'YYYY-MM-DD' (day) of ``now`` in ``tz``."""
    local = datetime.fromtimestamp(now, tz)
    return local.strftime("%Y-%m-%dT%H" if window == "hour" else "%Y-%m-%d")


def seconds_to_next_window(window: Window, now: float, tz: ZoneInfo) -> float:
    """Seconds from ``now`` until the next hour or local midnight in ``tz`` (DST days are 23 or 25 h)."""
    local = datetime.fromtimestamp(now, tz)
    if window == "hour":
        start = local.replace(minute=0, second=0, microsecond=0)
        nxt = (start.astimezone(UTC) + timedelta(hours=1)).timestamp()
    else:
        tomorrow = (local + timedelta(days=1)).date()
        nxt = datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=tz).timestamp()
    return max(nxt - now, 0.001)


def day_offset(day: str, days: int) -> str:
    """The calendar day ``days`` after ``day`` ('YYYY-MM-DD'; negative goes back)."""
    return (datetime.strptime(day, "%Y-%m-%d") + timedelta(days=days)).strftime("%Y-%m-%d")
