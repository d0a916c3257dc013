"""The injectable clock and the per-address figures: time zones, the test clock, persistence, retention."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from smtpinfra_mta.addrstats import RETENTION_DAYS, AddressStats
from smtpinfra_mta.clock import (
    FAKE_TIME_ENV,
    FileClock,
    SystemClock,
    clock_from_env,
    parse_time,
    seconds_to_next_window,
    window_id,
)
from smtpinfra_mta.config import ConfigError, Throttling, WarmupCap, parse_config
from smtpinfra_mta.throttle import WarmupGate

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class ManualClock:
    """A clock the test sets by hand (the unit tests' stand-in for the file clock)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def recheck(self, wait: float) -> float:
        return wait


def test_day_boundaries_follow_the_configured_time_zone() -> None:
    t = ts("2026-03-01T23:30:00+00:00")  # 00:30 on 2 March in Berlin
    assert window_id("day", t, UTC_ZONE) == "2026-03-01"
    assert window_id("day", t, BERLIN) == "2026-03-02"
    assert window_id("hour", t, BERLIN) == "2026-03-02T00"
    assert seconds_to_next_window("day", t, UTC_ZONE) == pytest.approx(1800)
    assert seconds_to_next_window("day", t, BERLIN) == pytest.approx(23.5 * 3600)
    assert seconds_to_next_window("hour", t, BERLIN) == pytest.approx(1800)


def test_a_daylight_saving_day_is_23_hours_long() -> None:
    t = ts("2026-03-29T00:00:00+01:00")  # Berlin springs forward at 02:00 that day
    assert seconds_to_next_window("day", t, BERLIN) == pytest.approx(23 * 3600)


def test_parse_time_reads_epoch_seconds_and_iso_timestamps() -> None:
    assert parse_time("86400") == 86400.0
    assert parse_time("1970-01-02T00:00:00Z") == 86400.0
    assert parse_time("1970-01-02T00:00:00") == 86400.0  # naive means UTC
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_file_clock_follows_the_file_and_keeps_the_last_good_value(tmp_path: Path) -> None:
    f = tmp_path / "now"
    f.write_text("2026-05-01T12:00:00Z")
    clock = FileClock(f, reread=0.0)
    assert clock.now() == ts("2026-05-01T12:00:00+00:00")
    f.write_text("2026-05-03T08:00:00Z")
    assert clock.now() == ts("2026-05-03T08:00:00+00:00")
    f.write_text("not a time")
    assert clock.now() == ts("2026-05-03T08:00:00+00:00")
    assert clock.recheck(86400.0) == 0.0  # never sleeps a fake day: the file may move at any moment
    assert isinstance(clock_from_env({FAKE_TIME_ENV: str(f)}), FileClock)
    assert isinstance(clock_from_env({}), SystemClock)


def test_config_rejects_an_unknown_time_zone(tmp_path: Path) -> None:
    base = {"hostname": "mta.test", "listeners": {"submission": {"enabled": False}, "inbound": {"enabled": False}}}
    assert parse_config({**base, "clock": {"timezone": "Europe/Berlin"}}).clock.zone == BERLIN
    with pytest.raises(ConfigError, match="unknown IANA time zone 'Mars/Olympus'"):
        parse_config({**base, "clock": {"timezone": "Mars/Olympus"}})


def test_figures_survive_a_reopen_and_old_days_are_dropped(tmp_path: Path) -> None:
    clock = ManualClock(ts("2026-01-01T10:00:00+00:00"))
    db = tmp_path / "addresses.sqlite"
    stats = AddressStats(db, clock, UTC_ZONE)
    stats.add("192.0.2.1", "gmail", "sent", 3, rcpts=["a@gmail.com", "b@gmail.com", "c@gmail.com"])
    stats.add("192.0.2.1", "gmail", "delivered", 2)
    stats.add("192.0.2.1", "gmail", "deferred", 1)
    stats.add("192.0.2.1", None, "sent", 1)
    stats.add("192.0.2.1", "bigmail", "sent", 1)  # not one of the reported providers: shown as "other"
    assert stats.attribute("B@gmail.com", "complained")
    assert not stats.attribute("nobody@example.com", "complained")
    stats.close()

    again = AddressStats(db, clock, UTC_ZONE)
    assert again.sent("192.0.2.1", None, "day") == 5
    assert again.sent("192.0.2.1", "gmail", "day") == 3
    assert again.sent("192.0.2.1", "gmail", "hour") == 3
    snap = again.snapshot()
    day = snap["192.0.2.1"]["days"]["2026-01-01"]
    assert day["gmail"] == {"sent": 3, "delivered": 2, "deferred": 1, "bounced": 0, "complained": 1}
    assert day["other"]["sent"] == 2
    assert snap["192.0.2.1"]["hour"]["2026-01-01T10"]["gmail"] == {"sent": 3}

    clock.t = ts("2026-01-02T10:00:00+00:00")  # a new day: nothing sent yet today, yesterday kept
    assert again.sent("192.0.2.1", None, "day") == 0
    assert "2026-01-01" in again.snapshot()["192.0.2.1"]["days"]
    assert again.snapshot()["192.0.2.1"]["hour"] == {}
    clock.t = ts("2026-01-01T10:00:00+00:00") + (RETENTION_DAYS + 1) * 86400
    again.add("192.0.2.1", "gmail", "sent", 1)
    days = again.snapshot()["192.0.2.1"]["days"]
    assert "2026-01-01" not in days and len(days) == 1
    again.close()
    assert "2026-01-01" not in AddressStats(db, clock, UTC_ZONE).snapshot()["192.0.2.1"]["days"]


def test_gate_room_is_the_tightest_of_daily_hourly_and_provider_caps() -> None:
    clock = ManualClock(ts("2026-01-01T10:00:00+00:00"))
    stats = AddressStats(None, clock, UTC_ZONE)
    caps = Throttling(providers=[{"name": "gmail", "mx_suffixes": ["google.com"]}], warmup=[
        WarmupCap(source_ip="192.0.2.1", per_day=10, per_hour=4),
        WarmupCap(source_ip="192.0.2.1", provider="gmail", per_day=3),
    ])
    gate = WarmupGate(caps, stats)
    assert gate.capped("192.0.2.1") and not gate.capped("192.0.2.2")
    assert gate.room("192.0.2.2", None) == (None, 0.0)
    assert gate.room("192.0.2.1", "gmail")[0] == 3
    assert gate.room("192.0.2.1", None)[0] == 4
    stats.add("192.0.2.1", "gmail", "sent", 3)
    fits, wait = gate.room("192.0.2.1", "gmail")
    assert fits == 0 and wait == pytest.approx(14 * 3600)  # gmail waits for tomorrow
    stats.add("192.0.2.1", None, "sent", 1)
    fits, wait = gate.room("192.0.2.1", None)
    assert fits == 0 and wait == pytest.approx(3600)  # the hourly cap: the next hour
    clock.t += 3600
    assert gate.room("192.0.2.1", None)[0] == 4
    assert gate.room("192.0.2.1", "gmail")[0] == 0
    stats.add("192.0.2.1", None, "sent", 6)  # 10 today
    assert gate.room("192.0.2.1", None)[0] == 0
    clock.t += 14 * 3600  # the next day: everything resets
    assert gate.room("192.0.2.1", "gmail")[0] == 3



def test_outcomes_are_committed_with_the_next_send_or_shortly_after(tmp_path: Path) -> None:
    """A "sent" is committed before the message leaves; outcomes ride along with the next one, or a timer."""
    import asyncio
    import sqlite3

    db = tmp_path / "addresses.sqlite"

    def on_disk(field: str) -> int:
        with sqlite3.connect(db) as conn:
            row = conn.execute(f"SELECT SUM({field}) FROM days").fetchone()
        return int(row[0] or 0)

    async def run() -> None:
        stats = AddressStats(db, SystemClock(), UTC_ZONE)
        stats.add("192.0.2.1", "gmail", "sent", 1, rcpts=["a@gmail.com"])
        assert on_disk("sent") == 1  # committed at once: the cap counts it before the message leaves
        stats.add("192.0.2.1", "gmail", "delivered", 1)
        assert on_disk("delivered") == 0 and stats.snapshot()["192.0.2.1"]["days"]  # in memory at once
        stats.add("192.0.2.1", "gmail", "sent", 1, rcpts=["b@gmail.com"])
        assert (on_disk("sent"), on_disk("delivered")) == (2, 1)  # one transaction for both
        stats.add("192.0.2.1", "gmail", "bounced", 1)
        for _ in range(50):  # nothing else being sent: the timer commits it
            await asyncio.sleep(0.05)
            if on_disk("bounced"):
                break
        assert on_disk("bounced") == 1
        stats.add("192.0.2.1", "gmail", "deferred", 1)
        stats.close()  # and closing commits what is queued
        assert on_disk("deferred") == 1

    asyncio.run(run())
