"""IpPool: assign addresses to the replicas of the SmtpServers that use the pool, report each address."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from smtpinfra_api.meta import API_VERSION, GROUP, VERSION
from smtpinfra_api.v1alpha1 import IpPool, IpPoolSpec, SmtpServerSpec, WarmupPlanSpec

from .. import kube
from ..builders.assignment import Assignment, ReplicaKey, assign, expand_addresses, ptr_name
from ..builders.mtaconfig import warmup_caps
from ..conditions import FALSE, TRUE, Outcome
from ..kicker import Kicker, Locks
from ..statuswriter import publish
from ..warmup import check as check_plan

log = logging.getLogger(__name__)
_locks: Locks[str] = Locks()
DAY = 86400.0
Requester = tuple[str, str, int]
"""(namespace, name, replicas) of an SmtpServer whose reconcile needs the pool."""


@dataclass(frozen=True)
class PoolState:
    """What a server needs to know about a pool after it was reconciled."""

    name: str
    spec: IpPoolSpec
    assignment: Assignment
    addresses: list[dict[str, Any]]
    """The per-address status written (camelCase)."""
    problem: Outcome | None
    """Why the pool cannot be used, if it cannot (e.g. its WarmupPlan is missing)."""

    def address(self, address: str) -> dict[str, Any]:
        """The status entry of one address."""
        return next(a for a in self.addresses if a["address"] == address)


def _servers_using(pool: str, servers: list[dict[str, Any]]) -> list[ReplicaKey]:
    """Every replica that wants an address of `pool`, oldest server first (stable order)."""
    users = []
    for server in servers:
        meta = server["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        try:
            spec = SmtpServerSpec.model_validate(server.get("spec") or {})
        except ValidationError:
            continue
        if pool in spec.ip_pools:
            users.append((meta.get("creationTimestamp", ""), meta["namespace"], meta["name"], spec.replicas))
    users.sort()
    return [ReplicaKey(ns, name, i) for _, ns, name, replicas in users for i in range(replicas)]


def _warmup_day(started: str | None, now: datetime) -> int:
    if not started:
        return 1
    begin = datetime.fromisoformat(started.replace("Z", "+00:00"))
    return int((now - begin).total_seconds() // DAY) + 1


def address_status(spec: IpPoolSpec, pool: str, assignment: Assignment, previous: dict[str, dict[str, Any]],
                   plan: WarmupPlanSpec | None, now: datetime) -> list[dict[str, Any]]:
    """Per-address status: PTR name, owner, warm-up day and today's cap (pure)."""
    out = []
    for index, address in enumerate(expand_addresses(spec.addresses)):
        before = previous.get(address, {})
        entry: dict[str, Any] = {"address": address, "ptrName": ptr_name(spec.ptr_template, address, index, pool),
                                 "listings": before.get("listings", []),
                                 "quarantined": before.get("quarantined", False)}
        if before.get("ptrOk") is not None:
            entry["ptrOk"] = before["ptrOk"]
        owner = assignment.by_address.get(address)
        if owner is not None:
            entry["assignedTo"] = str(owner)
        if plan is not None and owner is not None:
            started = before.get("warmupStarted") or now.strftime("%Y-%m-%dT%H:%M:%SZ")
            day = _warmup_day(started, now)
            entry.update({"warmupStarted": started, "warmupDay": day, "dailyCap": warmup_caps(plan, day)[0]})
        out.append(entry)
    return out


async def _servers(requesters: Iterable[Requester]) -> list[dict[str, Any]]:
    """The SmtpServers: the informer's view when it already shows every requester as it is now, else fresh.

    Every server reconcile re-derives its pools; a fresh list each time made a burst of N servers
    cost N² objects read. Only the requesters' own replicas decide their addresses, so a view
    that already has them with the same replicas is good enough; other servers' changes reach
    the pool through their own reconciles.
    """
    wanted = set(requesters)
    cached = await kube.list_cached(API_VERSION, "SmtpServer")
    if wanted:
        seen = {(s["metadata"]["namespace"], s["metadata"]["name"], (s.get("spec") or {}).get("replicas", 1))
                for s in cached if not s["metadata"].get("deletionTimestamp")}
        if not wanted <= seen:
            return await kube.list_cached(API_VERSION, "SmtpServer", fresh=True)
    return cached


@dataclass
class _Batch:
    """Reconciles of one pool asked for while another one ran: they share the next run."""

    future: asyncio.Future[PoolState | None]
    requesters: set[Requester] = field(default_factory=set)


_next: dict[str, _Batch] = {}


async def reconcile_pool(name: str, requester: Requester | None = None) -> PoolState | None:
    """Re-derive the pool's assignment and status; None when the pool does not exist.

    `requester` is (namespace, name, replicas) of the SmtpServer whose reconcile asks. A burst
    of 200 new servers used to run 200 pool reconciles one after another under the pool's lock
    (each a GET, a list and maybe a status write); now every request that arrives while one
    runs joins the next, which assigns addresses to all of them at once.
    """
    batch = _next.get(name)
    if batch is None:
        batch = _next[name] = _Batch(asyncio.get_running_loop().create_future())
        batch.future.add_done_callback(lambda f: f.cancelled() or f.exception())  # waiters may all be gone
        task = asyncio.get_running_loop().create_task(_run(name, batch))
        _running.add(task)
        task.add_done_callback(_running.discard)
    if requester is not None:
        batch.requesters.add(requester)
    return await asyncio.shield(batch.future)


_running: set[asyncio.Task[None]] = set()


async def _run(name: str, batch: _Batch) -> None:
    async with _locks(name):
        if _next.get(name) is batch:
            del _next[name]  # requests from now on wait for the next run
        try:
            result = await _reconcile_pool(name, batch.requesters)
        except Exception as error:  # every waiter sees the failure
            batch.future.set_exception(error)
        except BaseException:  # cancelled: the operator stops
            batch.future.cancel()
            raise
        else:
            batch.future.set_result(result)


async def _reconcile_pool(name: str, requesters: set[Requester]) -> PoolState | None:
    """One reconcile of the pool, under its lock."""
    body = await kube.get(API_VERSION, "IpPool", name)
    if body is None:
        return None
    try:
        spec = IpPoolSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        await publish(IpPool, body, Outcome(ready=FALSE, reason="InvalidSpec", message=str(error), stalled=True))
        return None
    servers = await _servers(requesters)  # fresh when a requester's replicas may just have changed
    replicas = _servers_using(name, servers)
    previous = {a["address"]: a for a in (body.get("status") or {}).get("addresses", [])}
    addresses = expand_addresses(spec.addresses)
    assignment = assign(addresses, replicas, {a: p.get("assignedTo", "") for a, p in previous.items()})

    plan: WarmupPlanSpec | None = None
    problem: Outcome | None = None
    if spec.warmup_plan:
        plan_body = await kube.get(API_VERSION, "WarmupPlan", spec.warmup_plan)
        if plan_body is None:
            problem = Outcome(ready=FALSE, reason="WarmupPlanNotFound", stalled=True,
                              message=f"WarmupPlan {spec.warmup_plan} not found; addresses will not send "
                                      "until it exists")
        else:
            try:
                plan = WarmupPlanSpec.model_validate(plan_body.get("spec") or {})
            except ValidationError:
                plan = None
            if plan is None or check_plan(plan):
                problem = Outcome(ready=FALSE, reason="WarmupPlanInvalid", stalled=True,
                                  message=f"WarmupPlan {spec.warmup_plan} is not valid (see its status)")
                plan = None
    statuses = address_status(spec, name, assignment, previous, plan, datetime.now(UTC))
    fields = {"total": len(addresses), "assigned": len(assignment.by_address), "addresses": statuses}
    if problem is not None:
        outcome = Outcome(ready=problem.ready, reason=problem.reason, message=problem.message,
                          stalled=True, fields=fields)
    elif assignment.unassigned:
        missing = ", ".join(str(r) for r in assignment.unassigned)
        outcome = Outcome(ready=FALSE, reason="PoolExhausted", stalled=True, fields=fields,
                          message=f"{len(assignment.unassigned)} replica(s) have no address: {missing}; add "
                                  f"addresses to the pool or lower the replicas")
    else:
        outcome = Outcome(ready=TRUE, reason="AddressesAvailable", fields=fields,
                          message=f"{len(assignment.by_address)} of {len(addresses)} addresses assigned")
    await publish(IpPool, body, outcome)
    return PoolState(name=name, spec=spec, assignment=assignment, addresses=statuses, problem=problem)


def server_view(state: PoolState, namespace: str, name: str, replicas: int) -> str:
    """What one server reads of a pool (pure): its problem, or per replica the address, EHLO name and cap."""
    if state.problem is not None:
        return f"problem {state.problem.reason}: {state.problem.message}"
    view = []
    for ordinal in range(replicas):
        address = state.assignment.address_of(ReplicaKey(namespace, name, ordinal))
        entry = state.address(address) if address else {}
        view.append((address, entry.get("ptrName"), entry.get("dailyCap")))
    return repr(view)


_views: dict[tuple[str, str, str], str] = {}
"""(pool, server namespace, server name) → the `server_view` that server's last reconcile rendered."""


def note_view(state: PoolState, namespace: str, name: str, replicas: int) -> None:
    """Record what a server's reconcile read of the pool, so a pool reconcile kicks it only when that changes."""
    _views[(state.name, namespace, name)] = server_view(state, namespace, name, replicas)


def forget_views(namespace: str, name: str) -> None:
    """A server is gone: drop what it read of every pool."""
    for key in [k for k in _views if k[1:] == (namespace, name)]:
        _views.pop(key, None)


async def _kick_servers(pool: str, state: PoolState | None, everyone: bool) -> None:
    """Kick the servers of the pool whose view of it changed (all of them when `everyone`).

    A resync reconciles every pool; kicking every server of a 200-server pool each time
    re-derived all of them in full at once, in front of new servers.
    """
    from .smtpserver import server_kicker

    for server in await kube.list_cached(API_VERSION, "SmtpServer"):
        spec = server.get("spec") or {}
        if pool not in spec.get("ipPools", []):
            continue
        namespace, name = server["metadata"]["namespace"], server["metadata"]["name"]
        if everyone or state is None or _views.get((pool, namespace, name)) != server_view(
                state, namespace, name, int(spec.get("replicas", 1))):
            server_kicker.kick((namespace, name))


async def _reconcile_and_kick(name: str, everyone: bool = False) -> None:
    await _kick_servers(name, await reconcile_pool(name), everyone)


pool_kicker: Kicker[str] = Kicker(_reconcile_and_kick)


@kopf.on.resume(GROUP, VERSION, IpPool.plural)
@kopf.on.create(GROUP, VERSION, IpPool.plural)
@kopf.on.update(GROUP, VERSION, IpPool.plural, field="spec")
@kopf.on.delete(GROUP, VERSION, IpPool.plural, optional=True)
async def on_pool(name: str, **_: Any) -> None:
    """A pool appeared or changed: re-assign and let its servers re-render."""
    await _reconcile_and_kick(name, everyone=True)


@kopf.on.event(GROUP, VERSION, "warmupplans")
async def on_plan_event(name: str, type: str | None, **_: Any) -> None:
    """A plan changed: pools that follow it recompute today's caps."""
    if type is None:
        return
    for pool in await kube.list_objects(API_VERSION, "IpPool"):
        if (pool.get("spec") or {}).get("warmupPlan") == name:
            pool_kicker.kick(pool["metadata"]["name"])
