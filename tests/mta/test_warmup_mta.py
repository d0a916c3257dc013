"""Warm-up caps, quarantine and overflow end to end: real mail through the MTA to smtp-sink, several days
on the test clock (SMTP_INFRA_FAKE_TIME_FILE), the source address of each message observed at the sink.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from smtpinfra_mta.clock import FAKE_TIME_ENV, parse_time
from smtpinfra_mta.config import parse_config

from .conftest import MTA_ADDR, SRC_A1, SRC_A2, Dns, RunningMta, Sink, base_config, submit, wait_for
from .test_feedback import RP, _send_report, arf, dsn

pytestmark = [pytest.mark.mta, pytest.mark.dns]


@pytest.fixture
def fake_now(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test clock's file; the MTA reads its time from it (epoch seconds or ISO)."""
    f = tmp_path / "now"
    f.write_text("2026-06-01T09:00:00Z")
    monkeypatch.setenv(FAKE_TIME_ENV, str(f))
    return f


@pytest.fixture
def env(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], sink_factory: Any,
        dns_server: Dns) -> dict[str, Any]:
    sink = sink_factory()
    cfg = base_config(tmp_path, tls_files, password_hashes, dns=dns_server, sink_port=sink.port)
    cfg["limits"]["max_recipients"] = 10
    # bigmail.test and bigmail2.test roll up to one provider, named as the warm-up plans name Google
    cfg["throttling"] = {"providers": [{"name": "gmail", "mx_suffixes": ["mx.bigmail.test"]}]}
    cfg["pools"][0]["source_ips"].append({"address": SRC_A2, "ehlo_name": "out2.alpha-pool.test"})
    return {"cfg": cfg, "sink": sink}


def _cap_waits(mta: RunningMta) -> float:
    return float(mta.app.metrics.registry.get_sample_value(
        "smtpinfra_mta_throttle_waits_total", {"reason": "warmup_or_suspend"}) or 0)


def _bounced(mta: RunningMta) -> float:
    reg = mta.app.metrics.registry
    return sum(s.value for m in reg.collect() if m.name == "smtpinfra_mta_bounced" for s in m.samples
               if s.name.endswith("_total"))


def _stats(mta: RunningMta) -> dict[str, Any]:
    url = f"http://{MTA_ADDR}:{mta.app.http_port}/stats"
    return dict(json.loads(urllib.request.urlopen(url, timeout=5).read()))


def _held(mta: RunningMta, sink: Sink, delivered: int, queued: int) -> None:
    """The sink has exactly ``delivered`` messages and the rest is held by the caps, not merely late."""
    sink.wait_messages(delivered, timeout=30)
    waits = _cap_waits(mta)
    wait_for(lambda: _cap_waits(mta) >= waits + 2, timeout=30)  # the queue was looked at again and held
    assert len(sink.messages()) == delivered
    assert len(mta.app.spool.queued_ids()) == queued


def test_daily_and_provider_caps_hold_over_days_and_restarts(env: dict[str, Any], mta_factory: Any,
                                                             fake_now: Path) -> None:
    cfg, sink = env["cfg"], env["sink"]
    cfg["pools"][0]["source_ips"].pop()  # one warming address
    cfg["throttling"]["warmup"] = [{"source_ip": SRC_A1, "per_day": 3},
                                   {"source_ip": SRC_A1, "provider": "gmail", "per_day": 2}]
    mta: RunningMta = mta_factory(cfg)
    rcpts = [f"g{i}@bigmail.test" for i in range(3)] + [f"o{i}@example.test" for i in range(4)]
    for r in rcpts:
        assert submit(mta, to=r).has("250 2.0.0 OK queued")
    # smtp-sink names its files in no particular order: a day's messages are those new since the day before
    days: list[set[str]] = []
    seen: set[str] = set()

    def close_day() -> None:
        now = {r for m in sink.messages() for r in m.rcpts}
        days.append(now - seen)
        seen.update(now)

    # day 1: 3 leave (at most 2 to gmail); a restart on the same day sends nothing more
    _held(mta, sink, 3, 4)
    mta.stop()
    mta = mta_factory(cfg)
    _held(mta, sink, 3, 4)
    close_day()
    fake_now.write_text("2026-06-02T09:00:00Z")
    _held(mta, sink, 6, 1)
    close_day()
    fake_now.write_text("2026-06-03T09:00:00Z")
    sink.wait_messages(7, timeout=30)
    wait_for(lambda: not mta.app.spool.queued_ids(), timeout=30)
    close_day()
    msgs = sink.messages()
    day_counts = [Counter("gmail" if r.endswith("bigmail.test") else "other" for r in d) for d in days]
    assert [sum(c.values()) for c in day_counts] == [3, 3, 1]
    assert all(c["gmail"] <= 2 for c in day_counts)
    assert sorted(r for m in msgs for r in m.rcpts) == sorted(rcpts)  # every message once, none lost
    assert {m.client_addr for m in msgs} == {SRC_A1}
    assert _bounced(mta) == 0
    addresses = _stats(mta)["addresses"][SRC_A1]["days"]
    assert sum(p["sent"] for p in addresses["2026-06-01"].values()) == 3
    assert sum(p["sent"] for p in addresses["2026-06-02"].values()) == 3
    assert addresses["2026-06-01"]["gmail"]["sent"] <= 2
    assert sum(p["delivered"] for d in addresses.values() for p in d.values()) == 7


def test_hourly_cap_spreads_a_day_over_hours(env: dict[str, Any], mta_factory: Any, fake_now: Path) -> None:
    cfg, sink = env["cfg"], env["sink"]
    cfg["pools"][0]["source_ips"].pop()
    cfg["throttling"]["warmup"] = [{"source_ip": SRC_A1, "per_day": 10, "per_hour": 2}]
    mta: RunningMta = mta_factory(cfg)
    for i in range(3):
        assert submit(mta, to=f"h{i}@example.test").has("250 2.0.0 OK queued")
    _held(mta, sink, 2, 1)
    fake_now.write_text("2026-06-01T10:00:00Z")
    sink.wait_messages(3, timeout=30)
    hours = _stats(mta)["addresses"][SRC_A1]["hour"]
    assert hours == {"2026-06-01T09": {"other": {"sent": 2}}, "2026-06-01T10": {"other": {"sent": 1}}}


def test_quarantined_and_paused_addresses_send_nothing_from_the_reload(env: dict[str, Any],
                                                                       mta_factory: Any) -> None:
    cfg, sink = env["cfg"], env["sink"]
    mta: RunningMta = mta_factory(cfg)

    def reload() -> None:
        mta.call(lambda: mta.app.reload(parse_config(cfg)))

    ips = cfg["pools"][0]["source_ips"]
    ips[0]["quarantined"] = True
    reload()
    for i in range(3):
        assert submit(mta, to=f"q{i}@example.test").has("250 2.0.0 OK queued")
    msgs = sink.wait_messages(3, timeout=30)
    assert {m.client_addr for m in msgs} == {SRC_A2}  # the quarantined address's traffic moved

    ips[1]["paused"] = True  # nothing may send: the mail waits, nothing bounces
    reload()
    waits = _cap_waits(mta)
    for i in range(2):
        assert submit(mta, to=f"p{i}@example.test").has("250 2.0.0 OK queued")
    wait_for(lambda: _cap_waits(mta) >= waits + 1, timeout=30)
    assert len(sink.messages()) == 3 and len(mta.app.spool.queued_ids()) == 2

    ips[0]["quarantined"] = False  # released: sending resumes from it at once
    reload()
    msgs = sink.wait_messages(5, timeout=30)
    assert {m.rcpts[0]: m.client_addr for m in msgs if m.rcpts[0].startswith("p")} == {
        "p0@example.test": SRC_A1, "p1@example.test": SRC_A1}
    assert _bounced(mta) == 0
    assert not mta.app.spool.queued_ids()


def test_overflow_to_warm_addresses_only_when_the_pool_says_so(env: dict[str, Any], mta_factory: Any,
                                                              fake_now: Path) -> None:
    cfg, sink = env["cfg"], env["sink"]
    cfg["throttling"]["warmup"] = [{"source_ip": SRC_A1, "per_day": 2}]  # SRC_A2 has no caps: warm
    mta: RunningMta = mta_factory(cfg)
    for i in range(5):
        assert submit(mta, to=f"v{i}@example.test").has("250 2.0.0 OK queued")
    _held(mta, sink, 2, 3)  # overflow "wait": the warming address is filled, the rest waits
    assert {m.client_addr for m in sink.messages()} == {SRC_A1}
    cfg["pools"][0]["overflow"] = "warm-addresses"
    mta.call(lambda: mta.app.reload(parse_config(cfg)))
    msgs = sink.wait_messages(5, timeout=30)
    assert Counter(m.client_addr for m in msgs) == {SRC_A1: 2, SRC_A2: 3}
    assert _bounced(mta) == 0


def _exported_caps(mta: RunningMta) -> dict[tuple[str, str, str], float]:
    reg = mta.app.metrics.registry
    return {(s.labels["source_ip"], s.labels["provider"], s.labels["window"]): s.value
            for m in reg.collect() if m.name == "smtpinfra_mta_warmup_cap_messages" for s in m.samples}


def test_the_caps_in_force_are_exported_and_follow_a_reload(env: dict[str, Any], mta_factory: Any,
                                                            fake_now: Path) -> None:
    cfg = env["cfg"]
    cfg["throttling"]["warmup"] = [{"source_ip": SRC_A1, "per_day": 6, "per_hour": 3},
                                   {"source_ip": SRC_A1, "provider": "gmail", "per_day": 2}]
    mta: RunningMta = mta_factory(cfg)
    assert _exported_caps(mta) == {(SRC_A1, "all", "day"): 6, (SRC_A1, "all", "hour"): 3,
                                   (SRC_A1, "gmail", "day"): 2}
    cfg["throttling"]["warmup"] = [{"source_ip": SRC_A2, "per_day": 9}]  # SRC_A1 warm now: no cap left for it
    mta.call(lambda: mta.app.reload(parse_config(cfg)))
    assert _exported_caps(mta) == {(SRC_A2, "all", "day"): 9}


def test_late_bounces_and_complaints_count_against_the_address_that_sent(env: dict[str, Any], mta_factory: Any,
                                                                         fake_now: Path) -> None:
    cfg, sink = env["cfg"], env["sink"]
    mta: RunningMta = mta_factory(cfg)
    for rcpt in ("gone@example.test", "angry@bigmail.test", "happy@example.test"):
        assert submit(mta, to=rcpt).has("250 2.0.0 OK queued")
    msgs = sink.wait_messages(3)
    by_rcpt = {m.rcpts[0]: m for m in msgs}
    fake_now.write_text("2026-06-02T08:00:00Z")  # the reports arrive the next day: they count on that day
    wait_for(lambda: mta.call(mta.app.clock.now) >= parse_time("2026-06-02T08:00:00Z"), timeout=10)
    gone, angry = by_rcpt["gone@example.test"], by_rcpt["angry@bigmail.test"]
    _send_report(mta, gone.mail_from, dsn(gone.mail_from, "gone@example.test", "5.1.1", "550 5.1.1 User unknown"))
    _send_report(mta, f"fbl@{RP}", arf(angry.mail_from, "angry@bigmail.test"))
    wait_for(lambda: not mta.app.spool.queued_ids(), timeout=30)

    def day2(address: str) -> dict[str, Any]:
        return dict(_stats(mta)["addresses"].get(address, {}).get("days", {}).get("2026-06-02", {}))

    wait_for(lambda: day2(gone.client_addr).get("other", {}).get("bounced") == 1, timeout=15)
    assert day2(angry.client_addr)["gmail"]["complained"] == 1
    day1 = {a: v["days"]["2026-06-01"] for a, v in _stats(mta)["addresses"].items()}
    assert sum(p["sent"] for d in day1.values() for p in d.values()) == 3
    assert sum(p["delivered"] for d in day1.values() for p in d.values()) == 3
    assert day1[angry.client_addr]["gmail"]["sent"] == 1
