"""The runtime: every part built once with the injected client, and event sources that only queue keys.

The client here is a recording stand-in for the Kubernetes API (named as such): the runtime is
built without a cluster, and anything but a write-through to the informers fails the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from prometheus_client import CollectorRegistry

from smtpinfra_kube import KubeApi
from smtpinfra_operator.peering import Peering
from smtpinfra_operator.runtime import Runtime


class RecordingKube:
    """A stand-in for the Kubernetes client: records `remember`, refuses every request."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def remember(self, obj: dict[str, Any]) -> None:
        self.calls.append(("remember", obj["metadata"]["name"]))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def refused(*_: Any, **__: Any) -> Any:
            self.calls.append((name,))
            raise AssertionError(f"the runtime called {name} while it had to wait")

        return refused


async def eventually(check: Callable[[], bool]) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def test_every_part_is_built_once_with_the_injected_client() -> None:
    fake = RecordingKube()
    kube = cast(KubeApi, fake)
    runtime = Runtime(None, kube=kube, metrics_registry=CollectorRegistry())
    assert runtime.servers.kube is kube and runtime.pools.kube is kube and runtime.tenants.kube is kube
    assert runtime.plans.kube is kube and runtime.campaigns.kube is kube
    assert runtime.campaigns.campaigns.api.kube is kube  # type: ignore[attr-defined]
    assert runtime.pools.monitor is runtime.blocklists
    assert runtime.dns.kube is kube and runtime.usage.kube is kube and runtime.status.kube is kube
    assert runtime.servers.pools is runtime.pools and runtime.servers.dns is runtime.dns
    # Two runtimes share no state: each has its own queues and registry.
    other = Runtime(None, kube=kube, metrics_registry=CollectorRegistry())
    assert other.servers.queue is not runtime.servers.queue
    assert other.metrics_registry is not runtime.metrics_registry
    assert fake.calls == []


def test_a_tenant_event_only_queues_its_key_and_a_replica_that_cannot_tell_the_peering_runs_nothing() -> None:
    """A peered replica that has not read the peering yet counts as paused: the key is parked, no request made."""
    fake = RecordingKube()
    registry = CollectorRegistry()
    body = {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme", "generation": 1, "labels": {"tier": "gold"}},
            "spec": {"displayName": "Acme", "senderDomains": ["acme.example"]}}

    async def scenario() -> Runtime:
        runtime = Runtime(Peering(name="p", identity="me", priority=10), kube=cast(KubeApi, fake),
                          metrics_registry=registry)
        runtime.tenants.queue.PARKED_POLL = 3600
        runtime.tenants.on_event("acme", body, None)
        runtime.tenants.on_event("acme", body, "MODIFIED")  # the same generation and labels: no second key
        await eventually(lambda: runtime.tenants.queue.parked() == 1)
        return runtime

    runtime = asyncio.run(asyncio.wait_for(scenario(), timeout=20))
    assert fake.calls == [("remember", "acme")]  # the event's object goes to the informers, nothing else
    assert registry.get_sample_value("smtpinfra_operator_reconcile_total",
                                     {"kind": "Tenant", "result": "parked"}) == 1
    assert registry.get_sample_value("smtpinfra_operator_queue_depth", {"kind": "Tenant"}) == 1
    assert registry.get_sample_value("smtpinfra_operator_active", {"peering": "p"}) == 0
    assert runtime.tenants.queue.pending() == 1


def test_kopf_keeps_and_builds_no_diff_base_for_the_event_driven_kinds() -> None:
    """Tenant and SmtpServer events are ours to read (a spec change is a new generation): Kopf neither
    stores their last-handled spec (one status write each) nor copies the body to diff against;
    IpPool, whose change handlers diff, still gets both."""
    import kopf

    from smtpinfra_operator.app import operator_settings

    storage = operator_settings().persistence.diffbase_storage

    def body(kind: str) -> kopf.Body:
        return kopf.Body({"apiVersion": "smtp-infra.io/v1alpha1", "kind": kind,
                          "metadata": {"name": "x", "labels": {"a": "b"}}, "spec": {"replicas": 2}})

    for kind in ("Tenant", "SmtpServer"):
        assert storage.build(body=body(kind)) == {}
        patch = kopf.Patch()
        storage.store(body=body(kind), patch=patch, essence=storage.build(body=body(kind)))
        assert not patch
    essence = storage.build(body=body("IpPool"))
    assert essence["spec"] == {"replicas": 2} and essence["metadata"]["labels"] == {"a": "b"}
    patch = kopf.Patch()
    storage.store(body=body("IpPool"), patch=patch, essence=essence)
    assert patch["status"]["kopf"]["lastHandledConfiguration"]
