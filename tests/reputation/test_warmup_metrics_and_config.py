"""Warm-up gauges, and what the MTA config builder passes per address: caps, quarantine, pause, overflow."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from smtpinfra_api.v1alpha1 import IpPoolSpec, MailboxProvider, SmtpServerSpec, TenantSpec, WarmupPlanSpec
from smtpinfra_mta.config import FAKE_TIME_ENV
from smtpinfra_operator.builders.assignment import Assignment, ReplicaKey
from smtpinfra_operator.builders.mtaconfig import ServedTenant, ServerInputs, SourceAddress, replica_config
from smtpinfra_operator.controllers.ippool import PoolState, source_address
from smtpinfra_operator.reputation.warmup_metrics import WarmupMetrics
from smtpinfra_operator.reputation.warmup_status import wall_now


def test_gauges_follow_the_status() -> None:
    registry = CollectorRegistry()
    metrics = WarmupMetrics(registry)
    metrics.observe("p", [{"address": "192.0.2.1", "state": "Held", "warmupDay": 4, "dailyCap": 1000},
                          {"address": "192.0.2.2", "state": "Quarantined"}])

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"pool": "p", **labels})

    assert value("smtpinfra_operator_address_state", address="192.0.2.1", state="Held") == 1
    assert value("smtpinfra_operator_address_state", address="192.0.2.1", state="Warming") == 0
    assert value("smtpinfra_operator_address_state", address="192.0.2.2", state="Quarantined") == 1
    assert value("smtpinfra_operator_warmup_day", address="192.0.2.1") == 4
    assert value("smtpinfra_operator_warmup_daily_cap", address="192.0.2.1") == 1000
    metrics.observe("p", [{"address": "192.0.2.1", "state": "Warm", "warmupDay": 9}])
    assert value("smtpinfra_operator_address_state", address="192.0.2.1", state="Warm") == 1
    assert value("smtpinfra_operator_address_state", address="192.0.2.1", state="Held") == 0
    assert value("smtpinfra_operator_warmup_daily_cap", address="192.0.2.1") is None  # warm: no cap


def test_source_address_carries_caps_quarantine_pause_and_overflow() -> None:
    spec = IpPoolSpec.model_validate({"addresses": ["192.0.2.1", "192.0.2.2", "192.0.2.3"], "warmupPlan": "p",
                                      "paused": ["192.0.2.2"], "overflow": "WarmAddresses"})
    plan = WarmupPlanSpec.model_validate({"stages": [
        {"day": 1, "dailyCap": 200}, {"day": 2, "dailyCap": 500, "hourlyCap": 50,
                                      "providerCaps": [{"provider": "gmail", "dailyCap": 100}]}]})
    key = ReplicaKey("mail", "s", 0)
    state = PoolState(
        name="pool", spec=spec, assignment=Assignment(by_address={"192.0.2.1": key}, unassigned=[]),
        addresses=[{"address": "192.0.2.1", "ptrName": "a.test", "warmupDay": 2, "dailyCap": 500, "hourlyCap": 50},
                   {"address": "192.0.2.2", "ptrName": "b.test", "warmupDay": 5, "quarantined": True},
                   {"address": "192.0.2.3", "ptrName": "c.test"}],
        problem=None, plan=plan)
    a = source_address(state, "pool", "192.0.2.1")
    assert (a.daily_cap, a.hourly_cap, [(p.value, c) for p, c in a.provider_caps]) == (500, 50, [("gmail", 100)])
    assert (a.quarantined, a.paused, a.overflow) == (False, False, "warm-addresses")
    b = source_address(state, "pool", "192.0.2.2")
    assert (b.daily_cap, b.quarantined, b.paused) == (None, True, True)  # day 5 is past the plan: warm
    assert source_address(state, "pool", "192.0.2.3").daily_cap is None


def test_replica_config_renders_the_flags_and_caps_the_mta_enforces() -> None:
    spec = SmtpServerSpec.model_validate({"hostname": "mta.example.test", "ipPools": ["p"],
                                          "returnPathDomain": "bounces.example.test", "tls": {"secretName": "tls"}})
    tenant = ServedTenant("t", TenantSpec.model_validate({"displayName": "T", "senderDomains": ["t.example.test"]}),
                          "p")
    addresses = {0: [SourceAddress("p", "127.0.1.1", "out1.example.test", daily_cap=200, hourly_cap=20,
                                   provider_caps=((MailboxProvider.GMAIL, 50),), quarantined=True,
                                   overflow="warm-addresses"),
                     SourceAddress("p", "127.0.1.2", "out2.example.test", paused=True, overflow="warm-addresses")]}
    cfg = replica_config(ServerInputs("mta", "mail", spec, [tenant], addresses), 0)
    pool = cfg.pool("p")
    assert pool.overflow == "warm-addresses"
    assert [(s.address, s.quarantined, s.paused) for s in pool.source_ips] == [
        ("127.0.1.1", True, False), ("127.0.1.2", False, True)]
    caps = {(c.source_ip, c.provider): (c.per_day, c.per_hour) for c in cfg.throttling.warmup}
    assert caps == {("127.0.1.1", None): (200, 20), ("127.0.1.1", "gmail"): (50, None)}


def test_the_operator_reads_the_mtas_test_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "now"
    f.write_text("2026-06-05T10:00:00Z")
    monkeypatch.setenv(FAKE_TIME_ENV, str(f))
    assert wall_now() == datetime(2026, 6, 5, 10, 0, tzinfo=UTC)
    monkeypatch.delenv(FAKE_TIME_ENV)
    assert abs((wall_now() - datetime.now(UTC)).total_seconds()) < 60
