"""The operator's own series that the alerts and the dashboard read: declared by the runtime, and the
warm-up gauges set by the IpPool controller from the status it publishes (and dropped with the pool)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from smtpinfra_kube import KubeApi
from smtpinfra_operator.controller import Deps
from smtpinfra_operator.controllers.ippool import IpPoolController
from smtpinfra_operator.metrics import RuntimeMetrics
from smtpinfra_operator.reputation.warmup_metrics import WarmupMetrics
from smtpinfra_operator.statuswriter import StatusWriter
from tests.observability.operator_metrics import operator_families

pytestmark = pytest.mark.observability


def test_the_runtime_declares_every_family_the_alerts_and_dashboard_use() -> None:
    declared = operator_families()
    for name in ("smtpinfra_operator_reconcile_total", "smtpinfra_operator_reconcile_duration_seconds_bucket",
                 "smtpinfra_operator_queue_depth", "smtpinfra_operator_active", "smtpinfra_operator_dnsbl_listed",
                 "smtpinfra_operator_dnsbl_zone_usable", "smtpinfra_operator_dnsbl_listings_total",
                 "smtpinfra_operator_address_state", "smtpinfra_operator_warmup_day",
                 "smtpinfra_operator_warmup_daily_cap", "smtpinfra_operator_campaign_recipients",
                 "smtpinfra_operator_tenant_suspended"):
        assert name in declared, name


class InformerStore:
    """A stand-in for the informers' cache (named as such): the objects a reconcile reads."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.objects = objects

    async def get_cached(self, api_version: str, kind: str, name: str, namespace: str | None = None,
                         **_: Any) -> dict[str, Any] | None:
        return self.objects.get((kind, name))

    async def list_cached(self, api_version: str, kind: str, namespace: str | None = None,
                          label_selector: str | None = None, fresh: bool = False) -> list[dict[str, Any]]:
        return [o for (k, _), o in self.objects.items() if k == kind]


class RecordingStatus:
    """A stand-in for the status writer: records what would be published."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    async def publish(self, model: Any, body: dict[str, Any], outcome: Any) -> None:
        self.published.append(outcome.fields)


def test_the_pool_controller_sets_the_warmup_gauges_from_what_it_publishes() -> None:
    store = InformerStore({
        ("IpPool", "p"): {"metadata": {"name": "p"},
                          "spec": {"addresses": ["192.0.2.1", "192.0.2.2"], "warmupPlan": "w"}},
        ("WarmupPlan", "w"): {"metadata": {"name": "w"},
                              "spec": {"stages": [{"day": 1, "dailyCap": 200}, {"day": 2, "dailyCap": 500}]}},
        ("SmtpServer", "s"): {"metadata": {"name": "s", "namespace": "mail",
                                           "creationTimestamp": "2026-01-01T00:00:00Z"},
                              "spec": {"hostname": "mail.example.com", "returnPathDomain": "bounces.example.com",
                                       "replicas": 1, "ipPools": ["p"]}},
    })
    registry = CollectorRegistry()
    status = RecordingStatus()
    deps = Deps(kube=cast(KubeApi, store), status=cast(StatusWriter, status), metrics=RuntimeMetrics(registry),
                paused=lambda: False)
    pools = IpPoolController(deps, usage=lambda: None, warmup_metrics=WarmupMetrics(registry))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"pool": "p", **labels})

    asyncio.run(pools.reconcile("p"))
    (published,) = status.published
    first = next(a for a in published["addresses"] if a["address"] == "192.0.2.1")
    assert (first["state"], first["warmupDay"], first["dailyCap"]) == ("Warming", 1, 200)
    assert value("smtpinfra_operator_address_state", address="192.0.2.1", state="Warming") == 1
    assert value("smtpinfra_operator_address_state", address="192.0.2.1", state="Held") == 0
    assert value("smtpinfra_operator_warmup_day", address="192.0.2.1") == 1
    assert value("smtpinfra_operator_warmup_daily_cap", address="192.0.2.1") == 200
    assert value("smtpinfra_operator_address_state", address="192.0.2.2", state="Warming") == 1  # unassigned
    assert value("smtpinfra_operator_warmup_day", address="192.0.2.2") is None  # it has not begun

    del store.objects[("IpPool", "p")]
    asyncio.run(pools.reconcile("p"))
    assert value("smtpinfra_operator_address_state", address="192.0.2.1", state="Warming") is None
    assert value("smtpinfra_operator_warmup_day", address="192.0.2.1") is None
    assert value("smtpinfra_operator_warmup_daily_cap", address="192.0.2.1") is None
