"""Traffic shaping against a real MX: provider-wide rates, warm-up caps across restarts, automation."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from smtpinfra_mta.config import ThrottleRule
from smtpinfra_mta.throttle import RateLimiter, effective_shaping

from .conftest import MTA_ADDR, SRC_A1, SRC_A2, Dns, RunningMta, base_config, submit, wait_for

pytestmark = pytest.mark.mta


@pytest.fixture
def env(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], sink_factory: Any,
        dns_server: Dns) -> dict[str, Any]:
    sink = sink_factory()
    cfg = base_config(tmp_path, tls_files, password_hashes, dns=dns_server, sink_port=sink.port)
    cfg["limits"]["max_recipients"] = 10
    cfg["throttling"] = {"providers": [{"name": "bigmail", "mx_suffixes": ["mx.bigmail.test"]}]}
    return {"cfg": cfg, "sink": sink, "sink_factory": sink_factory}


def test_rule_precedence_is_field_by_field() -> None:
    rules = [
        ThrottleRule(scope="default", connection_limit=10, max_deliveries_per_connection=100),
        ThrottleRule(scope="provider", match="google", connection_limit=5, max_message_rate=2.0),
        ThrottleRule(scope="domain", match="gmail.com", max_deliveries_per_connection=50),
        ThrottleRule(scope="source_ip", match="192.0.2.1", connection_limit=1),
    ]
    s = effective_shaping(rules, "gmail.com", "google", "192.0.2.9")
    assert (s.connection_limit, s.max_message_rate, s.max_deliveries_per_connection) == (5, 2.0, 50)
    s = effective_shaping(rules, "gmail.com", "google", "192.0.2.1")
    assert s.connection_limit == 1
    s = effective_shaping(rules, "example.com", None, "192.0.2.9")
    assert (s.connection_limit, s.max_message_rate) == (10, None)


def test_rate_limiter_never_exceeds_rate() -> None:
    rl = RateLimiter()
    waits = [rl.reserve("k", 10.0, now=100.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert rl.reserve("other", 10.0, now=100.0) == 0.0


@pytest.mark.dns
def test_provider_rate_is_shared_by_rolled_up_domains(env: dict[str, Any], mta_factory: Any) -> None:
    env["cfg"]["throttling"]["rules"] = [{"scope": "provider", "match": "bigmail", "max_message_rate": "2/s"}]
    mta: RunningMta = mta_factory(env["cfg"])
    for i in range(3):
        r = submit(mta, to=f"a{i}@bigmail.test,b{i}@bigmail2.test")
        assert r.has("250 2.0.0 OK queued"), r.replies()
    env["sink"].wait_messages(6, timeout=20)
    times = sorted(f.stat().st_mtime for f in env["sink"].directory.glob("m.*"))
    # 6 transactions at 2/s across both domains (one provider) need at least 2.5 s
    assert times[-1] - times[0] >= 2.3, times


def _cap_waits(mta: RunningMta) -> float:
    """Times the MTA held a queue because every source IP of the pool was capped (its own evidence)."""
    return float(mta.app.metrics.registry.get_sample_value(
        "smtpinfra_mta_throttle_waits_total", {"reason": "warmup_or_suspend"}) or 0)


@pytest.mark.dns
def test_warmup_caps_spread_over_pool_and_hold_across_restart(env: dict[str, Any], mta_factory: Any) -> None:
    cfg = env["cfg"]
    cfg["pools"][0]["source_ips"].append({"address": SRC_A2, "ehlo_name": "out2.alpha-pool.test"})
    cfg["throttling"]["warmup"] = [{"source_ip": SRC_A1, "per_day": 2}, {"source_ip": SRC_A2, "per_hour": 1}]
    mta: RunningMta = mta_factory(cfg)
    for i in range(4):
        assert submit(mta, to=f"w{i}@example.test").has("250 2.0.0 OK queued")
    env["sink"].wait_messages(3)
    wait_for(lambda: _cap_waits(mta) >= 1, timeout=30)  # the fourth is held by the caps, not merely late
    msgs = env["sink"].messages()
    by_ip = sorted(m.client_addr for m in msgs)
    assert by_ip == [SRC_A1, SRC_A1, SRC_A2]
    assert len(mta.app.spool.queued_ids()) == 1
    mta.stop()
    # a restart must not reset the caps: the restarted MTA takes up the queued message and is held by them
    again: RunningMta = mta_factory(cfg)
    assert len(again.app.spool.queued_ids()) == 1
    wait_for(lambda: _cap_waits(again) >= 1, timeout=30)
    assert len(env["sink"].messages()) == 3
    assert len(again.app.spool.queued_ids()) == 1


@pytest.mark.dns
def test_automation_suspends_provider_on_matching_reply(env: dict[str, Any], mta_factory: Any) -> None:
    sink = env["sink"]
    sink.stop()
    env["sink_factory"]("-r", "RCPT", "-b", "421 4.7.0 [TSS04] Messages temporarily deferred", port=sink.port,
                        name="tss")
    cfg = env["cfg"]
    cfg["throttling"]["automation"] = [
        {"name": "bigmail-tss04", "regex": r"\[TSS04\]", "scope": "provider", "action": "suspend", "duration": "1h"}
    ]
    mta: RunningMta = mta_factory(cfg)
    assert submit(mta, to="x@bigmail.test").has("250 2.0.0 OK queued")

    def fired() -> float:
        return float(mta.app.metrics.registry.get_sample_value(
            "smtpinfra_mta_automation_fired_total", {"rule": "bigmail-tss04"}) or 0)

    wait_for(lambda: fired() >= 1)
    assert submit(mta, to="y@bigmail2.test").has("250 2.0.0 OK queued")  # same provider: also held
    # retry_schedule is 1s: the retry of x@ and the first try of y@ are both held by the suspension
    wait_for(lambda: _cap_waits(mta) >= 2, timeout=30)
    assert fired() == 1
    deferred = mta.app.metrics.registry.get_sample_value(
        "smtpinfra_mta_deferred_total", {"tenant": "alpha", "pool": "alpha", "source_ip": SRC_A1,
                                         "provider": "bigmail"})
    assert deferred == 1
    stats = json.loads(urllib.request.urlopen(f"http://{MTA_ADDR}:{mta.app.http_port}/stats", timeout=5).read())
    assert stats["automation"]["provider:bigmail"]["rule"] == "bigmail-tss04"
    assert stats["queue"]["messages"] == 2


@pytest.mark.dns
def test_max_deliveries_per_connection_opens_a_new_connection(env: dict[str, Any], mta_factory: Any) -> None:
    cfg = env["cfg"]
    cfg["delivery"]["idle_timeout"] = "3s"
    cfg["throttling"]["rules"] = [{"scope": "domain", "match": "example.test", "connection_limit": 1,
                                   "max_deliveries_per_connection": 2}]
    mta: RunningMta = mta_factory(cfg)
    sink = env["sink"]
    for i in range(3):
        assert submit(mta, to=f"m{i}@example.test").has("250 2.0.0 OK queued")
    sink.wait_messages(3)
    # 2 deliveries per connection: the first connection was closed after two, the second is idling
    wait_for(lambda: sink.sessions() >= 1)
    assert sink.sessions() == 1
    wait_for(lambda: sink.sessions() == 2, timeout=10)
    assert mta.app.spool.queued_ids() == []
