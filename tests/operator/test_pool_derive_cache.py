"""A pool's derivation is reused while what it read is the same, and done again when any of it changes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from prometheus_client import CollectorRegistry

from smtpinfra_kube import KubeApi
from smtpinfra_operator.builders.assignment import ReplicaKey
from smtpinfra_operator.controller import Clock, Deps
from smtpinfra_operator.controllers.ippool import IpPoolController, derive_inputs, servers_using
from smtpinfra_operator.metrics import RuntimeMetrics
from smtpinfra_operator.statuswriter import StatusWriter
from smtpinfra_operator.usage import Snapshot

NOON = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


def pool(version: str = "7", plan: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"addresses": ["127.0.40.0/30"], **({"warmupPlan": plan} if plan else {})}
    return {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool",
            "metadata": {"name": "p", "resourceVersion": version, "generation": 1}, "spec": spec}


def server(name: str, replicas: int = 1) -> dict[str, Any]:
    return {"metadata": {"namespace": "mail", "name": name, "creationTimestamp": f"2026-12-01T00:00:0{name[-1]}Z"},
            "spec": {"ipPools": ["p"], "replicas": replicas}}


def key(body: dict[str, Any] | None = None, servers: list[dict[str, Any]] | None = None,
        plan: dict[str, Any] | None = None, ptr: dict[str, bool] | None = None, now: datetime = NOON,
        snapshot: Snapshot | None = None, view: object = None) -> Any:
    users = servers_using("p", servers if servers is not None else [server("a1")])
    return derive_inputs(body or pool(), users, plan, ptr or {}, now, snapshot, view)


def test_the_same_reads_make_the_same_key_and_any_change_a_different_one() -> None:
    base = key()
    assert base is not None and base.same(key())
    assert not base.same(key(body=pool(version="8")))  # a spec or status change
    assert not base.same(key(servers=[server("a1"), server("b2")]))  # another server uses the pool
    assert not base.same(key(servers=[server("a1", replicas=2)]))  # a server scaled
    assert not base.same(key(ptr={"127.0.40.1": True}))  # a PTR check came in
    assert not base.same(key(now=NOON + timedelta(days=1)))  # a new warm-up day
    assert base.same(key(now=NOON + timedelta(hours=3)))  # the same day, no plan: time does not matter
    assert not base.same(key(view=object()))  # the blocklist monitor has a new view
    snapshot, equal = (Snapshot(at="2026-12-02T12:00:00Z", servers=(), reports=()) for _ in range(2))
    assert not key(snapshot=snapshot).same(key(snapshot=equal))  # a new /stats round, even with the same figures
    assert key(snapshot=snapshot).same(key(snapshot=snapshot))


def test_with_a_plan_the_second_and_the_plans_version_count() -> None:
    plan = {"metadata": {"name": "w", "resourceVersion": "3"}, "spec": {}}
    with_plan = key(body=pool(plan="w"), plan=plan)
    assert with_plan is not None
    assert not with_plan.same(key(body=pool(plan="w"), plan=plan, now=NOON + timedelta(seconds=1)))
    assert not with_plan.same(key(body=pool(plan="w"), plan={**plan, "metadata": {"resourceVersion": "4"}}))
    assert not with_plan.same(key(body=pool(plan="w"), plan=None))  # the plan was deleted


def test_an_object_without_a_resource_version_is_never_reused() -> None:
    body = pool()
    del body["metadata"]["resourceVersion"]
    assert key(body=body) is None


class Store:
    """A stand-in for the informers' cache (named as such): the objects a reconcile reads."""

    def __init__(self, objects: dict[str, Any], servers: list[dict[str, Any]]) -> None:
        self.objects, self.servers = objects, servers

    async def get_cached(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Any:
        return self.objects.get(name) if kind == "IpPool" else None

    async def list_cached(self, api_version: str, kind: str, fresh: bool = False) -> list[dict[str, Any]]:
        return self.servers


def test_a_server_read_reuses_the_pools_last_derivation_until_a_server_is_added() -> None:
    store = Store({"p": pool()}, [server("a1")])
    deps = Deps(kube=cast(KubeApi, store), status=cast(StatusWriter, None), metrics=RuntimeMetrics(CollectorRegistry()),
                paused=lambda: False, clock=Clock(now=lambda: NOON))
    pools = IpPoolController(deps, usage=lambda: None)

    async def scenario() -> None:
        first = await pools.read_pool("p", ("mail", "a1", 1))
        again = await pools.read_pool("p", ("mail", "a1", 1))
        assert first is not None and again is first  # not derived again
        store.servers = [server("a1"), server("b2")]
        third = await pools.read_pool("p", ("mail", "b2", 1))
        assert third is not None and third is not first
        a1, b2 = ReplicaKey("mail", "a1", 0), ReplicaKey("mail", "b2", 0)
        assert third.assignment.address_of(a1) == first.assignment.address_of(a1) == "127.0.40.1"
        assert third.assignment.address_of(b2) == "127.0.40.2"
        assert third.address("127.0.40.2")["assignedTo"] == "mail/b2/0"

    asyncio.run(scenario())
