"""IpPool: assign addresses to the replicas of the SmtpServers that use the pool, report each address.

`derive` (pure) turns the pool, the servers and the plan as read into the assignment and the status;
`IpPoolController.reconcile` is the only writer of an IpPool's status. A server's reconcile derives
the same from the same reads (`read_pool`) and kicks the pool's queue when the pool has something new
to publish; PTR results from a server's DNS check reach the pool the same way (`note_ptr_checks`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from smtpinfra_api.meta import API_VERSION
from smtpinfra_api.v1alpha1 import (
    AddressState,
    AddressStatus,
    IpPool,
    IpPoolSpec,
    Overflow,
    QueuedMail,
    SmtpServerSpec,
    WarmupPlanSpec,
)

from ..builders.assignment import Assignment, ReplicaKey, assign, expand_addresses, ptr_name
from ..builders.mtaconfig import SourceAddress
from ..conditions import FALSE, TRUE, Outcome
from ..controller import Controller, Deps
from ..kicker import Locks
from ..reputation import dnsbl_status
from ..reputation.dnsbl_monitor import DnsblMonitor
from ..reputation.warmup import DayFigures, DayVerdict, caps_for_day
from ..reputation.warmup_metrics import WarmupMetrics
from ..reputation.warmup_status import can_send, needs_event, pool_figures, warmup_fields
from ..usage import Snapshot
from ..warmup import check as check_plan

log = logging.getLogger(__name__)
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
    plan: WarmupPlanSpec | None = None
    verdicts: tuple[tuple[str, DayVerdict], ...] = ()
    """(address, verdict) of the days judged in this derivation: holds and step-backs become Events."""

    @functools.cached_property
    def _by_address(self) -> dict[str, dict[str, Any]]:
        return {a["address"]: a for a in self.addresses}

    def address(self, address: str) -> dict[str, Any]:
        """The status entry of one address (KeyError for an address not in the pool)."""
        return self._by_address[address]


PUBLISH_DELAY = 2.0
"""Seconds a pool waits to publish what new servers' reconciles derived. The servers do not wait
for it (they derive their addresses themselves); a pool's status holds every address of a /24, and
each write of it costs the API server a decode, validation and encode of the whole object, so servers
arriving together are published in one write."""

DEFAULT_REPLICAS: int = SmtpServerSpec.model_fields["replicas"].default


def servers_using(pool: str, servers: list[dict[str, Any]]) -> list[ReplicaKey]:
    """Every replica that wants an address of `pool`, oldest server first (stable order).

    Reads the two fields from the raw spec (the CRD schema validated them), not through the model:
    every server's reconcile derives its pools, and validating every server's spec each time made
    a burst of N servers cost N² validations. A value of the wrong type counts as no pool.
    """
    users = []
    for server in servers:
        meta = server["metadata"]
        spec = server.get("spec") or {}
        pools, replicas = spec.get("ipPools"), spec.get("replicas", DEFAULT_REPLICAS)
        if meta.get("deletionTimestamp") or not isinstance(pools, list) or pool not in pools \
                or not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            continue
        users.append((meta.get("creationTimestamp", ""), meta["namespace"], meta["name"], replicas))
    users.sort()
    return [ReplicaKey(ns, name, i) for _, ns, name, replicas in users for i in range(replicas)]


def address_status(spec: IpPoolSpec, pool: str, assignment: Assignment, previous: dict[str, dict[str, Any]],
                   plan: WarmupPlanSpec | None, now: datetime, ptr_checks: dict[str, bool] | None = None,
                   figures: Mapping[str, Mapping[str, DayFigures]] | None = None,
                   verdicts: list[tuple[str, DayVerdict]] | None = None) -> list[dict[str, Any]]:
    """Per-address status: PTR name, owner, PTR check, warm-up position, today's caps and state (pure).

    `ptr_checks` are the latest PTR results a server's DNS check found; without one, an address
    keeps the result it had. `figures` are the MTAs' per-day figures of each address, None while
    not every pod answered: the warm-up day then stays where it is (see `reputation.warmup_status`).
    Verdicts reached here are appended to `verdicts`.
    """
    out = []
    today = now.astimezone(UTC).date().isoformat()  # the MTAs' day boundaries are UTC by default
    for index, address in enumerate(expand_addresses(spec.addresses)):
        before = previous.get(address, {})
        owner = assignment.by_address.get(address)
        quarantined = bool(before.get("quarantined", False))
        entry = AddressStatus(address=address, ptr_name=ptr_name(spec.ptr_template, address, index, pool),
                              listings=before.get("listings", []), quarantined=quarantined,
                              ptr_ok=(ptr_checks or {}).get(address, before.get("ptrOk")),
                              assigned_to=str(owner) if owner is not None else None)
        known = figures.get(address) if figures is not None and owner is not None else None
        started = owner is not None or bool(before.get("warmupDay"))  # an unused address has not begun
        warm = warmup_fields(plan, before, known, today, quarantined=quarantined, paused=address in spec.paused,
                             started=started)
        for name, value in warm.fields.items():
            setattr(entry, name, value)
        if plan is not None and started:
            entry.warmup_started = (datetime.fromisoformat(before["warmupStarted"].replace("Z", "+00:00"))
                                    if before.get("warmupStarted") else now.replace(microsecond=0))
        if verdicts is not None:
            verdicts.extend((address, v) for v in warm.new_verdicts)
        out.append(entry.wire())
    return out


def source_address(state: PoolState, pool: str, address: str) -> SourceAddress:
    """One replica's sending address as the MTA config needs it: today's caps, quarantine, pause, overflow."""
    entry = state.address(address)
    day = entry.get("warmupDay")
    daily = entry.get("dailyCap")  # the caps the pool published; per provider ones come from the plan's day
    caps = caps_for_day(state.plan, int(day)) if state.plan is not None and day and daily is not None else None
    return SourceAddress(
        pool=pool, address=address, ehlo_name=entry["ptrName"], daily_cap=daily, hourly_cap=entry.get("hourlyCap"),
        provider_caps=caps.providers if caps is not None else (),
        quarantined=bool(entry.get("quarantined")) or entry.get("state") == AddressState.QUARANTINED,
        paused=address in state.spec.paused,
        overflow="warm-addresses" if state.spec.overflow == Overflow.WARM_ADDRESSES else "wait",
        move_when_blocked=state.spec.quarantine.queued_mail == QueuedMail.MOVE)


def _plan_problem(name: str, plan_body: dict[str, Any] | None) -> tuple[WarmupPlanSpec | None, Outcome | None]:
    """The pool's warm-up plan, or why it cannot be used (pure)."""
    if plan_body is None:
        return None, Outcome(ready=FALSE, reason="WarmupPlanNotFound", stalled=True,
                             message=f"WarmupPlan {name} not found; addresses will not send until it exists")
    try:
        plan: WarmupPlanSpec | None = WarmupPlanSpec.model_validate(plan_body.get("spec") or {})
    except ValidationError:
        plan = None
    if plan is None or check_plan(plan):
        return None, Outcome(ready=FALSE, reason="WarmupPlanInvalid", stalled=True,
                             message=f"WarmupPlan {name} is not valid (see its status)")
    return plan, None


def derive(name: str, spec: IpPoolSpec, status: dict[str, Any], servers: list[dict[str, Any]],
           plan_body: dict[str, Any] | None, ptr_checks: dict[str, bool], now: datetime,
           figures: Mapping[str, Mapping[str, DayFigures]] | None = None,
           blocklists: tuple[dnsbl_status.PoolConfig, dnsbl_status.PoolView] | None = None,
           users: list[ReplicaKey] | None = None) -> tuple[PoolState, Outcome]:
    """The pool's assignment, per-address status and Ready outcome from what was read (pure).

    The IpPool controller publishes it; a server's reconcile derives the same from the same reads
    to learn its addresses without writing the pool's status (one writer per status). `users`
    is `servers_using(name, servers)` when the caller has it already.
    """
    replicas = users if users is not None else servers_using(name, servers)
    previous = {a["address"]: a for a in status.get("addresses", [])}
    addresses = expand_addresses(spec.addresses)
    assignment = assign(addresses, replicas, {a: p.get("assignedTo", "") for a, p in previous.items()})
    plan, problem = _plan_problem(spec.warmup_plan, plan_body) if spec.warmup_plan else (None, None)
    verdicts: list[tuple[str, DayVerdict]] = []
    if blocklists is not None:  # the blocklist monitor's decisions (listings, quarantine) decide the state too
        config, view = blocklists
        checked = {a: f for a in addresses if (f := dnsbl_status.address_fields(config, view, a))}
        previous = {**previous, **{a: {"address": a, **previous.get(a, {}), **f} for a, f in checked.items()}}
    statuses = address_status(spec, name, assignment, previous, plan, now, ptr_checks, figures, verdicts)
    fields: dict[str, Any] = {"total": len(addresses), "assigned": len(assignment.by_address), "addresses": statuses}
    if blocklists is not None:  # and their details (each zone's state, last check, zone health)
        statuses[:] = [{**s, **dnsbl_status.address_fields(config, view, s["address"])} for s in statuses]
        fields["blocklistZones"] = dnsbl_status.zone_fields(view)
    if problem is not None:
        outcome = Outcome(ready=problem.ready, reason=problem.reason, message=problem.message,
                          stalled=True, fields=fields)
    elif assignment.unassigned:
        missing = ", ".join(str(r) for r in assignment.unassigned)
        outcome = Outcome(ready=FALSE, reason="PoolExhausted", stalled=True, fields=fields,
                          message=f"{len(assignment.unassigned)} replica(s) have no address: {missing}; add "
                                  f"addresses to the pool or lower the replicas")
    elif assignment.by_address and not can_send(statuses):
        outcome = Outcome(ready=FALSE, reason="NoAddressCanSend", fields=fields,
                          message="every assigned address is quarantined or paused; mail waits in the queues")
    else:
        outcome = Outcome(ready=TRUE, reason="AddressesAvailable", fields=fields,
                          message=f"{len(assignment.by_address)} of {len(addresses)} addresses assigned")
    if blocklists is not None:
        outcome = replace(outcome, extra_conditions=(*outcome.extra_conditions, dnsbl_status.degraded(blocklists[1])))
    return PoolState(name=name, spec=spec, assignment=assignment, addresses=statuses, problem=problem, plan=plan,
                     verdicts=tuple(verdicts)), outcome


def server_view(state: PoolState, namespace: str, name: str, replicas: int) -> str:
    """What one server reads of a pool (pure): its problem, or per replica the address, EHLO name and cap."""
    if state.problem is not None:
        return f"problem {state.problem.reason}: {state.problem.message}"
    view = []
    for ordinal in range(replicas):
        address = state.assignment.address_of(ReplicaKey(namespace, name, ordinal))
        # what reaches the MTA config: the address, its EHLO name, today's caps, quarantine, pause, overflow
        view.append(source_address(state, state.name, address) if address else None)
    return repr(view)


def pool_day_figures(snapshot: Snapshot | None, pool: str, spec: IpPoolSpec,
                     now: datetime) -> dict[str, dict[str, DayFigures]] | None:
    """The pool's addresses' per-day figures from a /stats snapshot of the pods of the servers using it (pure).

    None (not known completely) while the snapshot was taken before today began: the day that just
    ended would be judged on what it had sent by then, a full day passing for an idle one.
    """
    if snapshot is None:
        return None
    if snapshot.taken is not None and snapshot.taken.astimezone(UTC).date() < now.astimezone(UTC).date():
        return None
    servers = {(s.namespace, s.name) for s in snapshot.servers if pool in s.ip_pools}
    reports = [r.addresses for r in snapshot.reports if (r.namespace, r.server) in servers]
    return pool_figures(reports, expand_addresses(spec.addresses))


@dataclass(frozen=True)
class DeriveInputs:
    """What one `derive` of a pool read, to reuse its result while nothing of it changed.

    Every new server derives its pools, and so do the pool's reconcile and the servers following
    its status: with a /24 that was 256 address statuses built again and again from the same
    reads. Values compare by equality; the /stats snapshot and the blocklist view by identity
    (each is replaced whole when it changes).
    """

    values: tuple[Any, ...]
    snapshot: Snapshot | None
    view: object

    def same(self, other: DeriveInputs) -> bool:
        return self.values == other.values and self.snapshot is other.snapshot and self.view is other.view


def derive_inputs(body: Mapping[str, Any], users: list[ReplicaKey], plan_body: Mapping[str, Any] | None,
                  ptr_checks: Mapping[str, bool], now: datetime, snapshot: Snapshot | None,
                  view: object) -> DeriveInputs | None:
    """The key of a derivation (pure); None when the pool has no resourceVersion to tell versions apart.

    The time enters as the UTC day (warm-up days and caps change with it), and to the second when
    the pool has a plan (an address's warm-up start is stamped with it).
    """
    meta = body.get("metadata") or {}
    version = meta.get("resourceVersion")
    if not version:
        return None
    spec = body.get("spec") or {}
    plan_version = ((plan_body or {}).get("metadata") or {}).get("resourceVersion") if plan_body else None
    moment = now.astimezone(UTC).replace(microsecond=0) if spec.get("warmupPlan") else now.astimezone(UTC).date()
    return DeriveInputs((version, tuple(users), plan_body is None, plan_version,
                         tuple(sorted(ptr_checks.items())), moment), snapshot, view)


class IpPoolController(Controller[str]):
    """Keys are pool names: from Kopf's watch of IpPools, the servers that use them (new replicas, PTR
    checks), their warm-up plans and the resync. The servers learn of a new status through their own
    watch of the pools, not from here."""

    kind = "IpPool"

    def __init__(self, deps: Deps, usage: Callable[[], Snapshot | None],
                 warmup_metrics: WarmupMetrics | None = None) -> None:
        super().__init__(deps)
        self.warmup_metrics = warmup_metrics
        """Gauges of each address's state, warm-up day and cap, set from the status this controller publishes."""
        self.monitor: DnsblMonitor | None = None
        """The blocklist monitor (`attach_monitor`): its listings and quarantine decisions reach the
        pool's status through this controller's reconcile; None in unit tests."""
        self._usage = usage
        """The latest /stats snapshot (the per-address figures warm-up days are judged by)."""
        self._locks: Locks[str] = Locks()
        self._ptr_checks: dict[str, dict[str, bool]] = {}
        """Per pool, the latest PTR (FCrDNS) result per address that a server's DNS check found; the
        pool's own reconcile writes them into its status (`note_ptr_checks`)."""
        self._derived: dict[str, tuple[DeriveInputs, PoolState, Outcome]] = {}
        """Per pool, the last derivation and what it read (`DeriveInputs`)."""
        self._views: dict[tuple[str, str, str], str] = {}
        """(pool, server namespace, server name) → the `server_view` that server's last reconcile rendered."""

    def attach_monitor(self, monitor: DnsblMonitor) -> None:
        """Publish the monitor's results (it kicks this queue when they change)."""
        self.monitor = monitor

    def note_ptr_checks(self, pools: Iterable[str], ptr_ok: dict[str, bool]) -> None:
        """A server's DNS reconcile checked its addresses' PTRs: the pools publish it (they own their status)."""
        if not ptr_ok:
            return
        for pool in pools:
            known = self._ptr_checks.setdefault(pool, {})
            if any(known.get(a) != ok for a, ok in ptr_ok.items()):
                known.update(ptr_ok)
                self.kick(pool)

    async def _servers(self, requesters: Iterable[Requester]) -> list[dict[str, Any]]:
        """The SmtpServers: the informer's view when it already shows every requester as it is now, else fresh.

        Every server reconcile re-derives its pools; a fresh list each time made a burst of N servers
        cost N² objects read. Only the requesters' own replicas decide their addresses, so a view
        that already has them with the same replicas is good enough; other servers' changes reach
        the pool through their own reconciles.
        """
        wanted = set(requesters)
        cached = await self.kube.list_cached(API_VERSION, "SmtpServer")
        if wanted:
            seen = {(s["metadata"]["namespace"], s["metadata"]["name"], (s.get("spec") or {}).get("replicas", 1))
                    for s in cached if not s["metadata"].get("deletionTimestamp")}
            if not wanted <= seen:
                return await self.kube.list_cached(API_VERSION, "SmtpServer", fresh=True)
        return cached


    async def _read(self, name: str, requesters: Iterable[Requester]) -> tuple[dict[str, Any], IpPoolSpec,
                                                                               PoolState, Outcome] | None:
        """Read the pool, its servers and its plan from the informers and derive (no write); None: no pool.

        Raises ValidationError for a pool whose spec does not validate.
        """
        body = await self.kube.get_cached(API_VERSION, "IpPool", name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        spec = IpPoolSpec.model_validate(body.get("spec") or {})
        servers = await self._servers(requesters)
        plan_body = (await self.kube.get_cached(API_VERSION, "WarmupPlan", spec.warmup_plan)
                     if spec.warmup_plan else None)
        if self.monitor is not None:
            self.monitor.configure(name, spec, body.get("status"))
        now, snapshot, ptr_checks = self.clock.now(), self._usage(), self._ptr_checks.get(name, {})
        view = self.monitor.view(name) if self.monitor is not None else None
        users = servers_using(name, servers)
        inputs = derive_inputs(body, users, plan_body, ptr_checks, now, snapshot, view)
        last = self._derived.get(name)
        if inputs is not None and last is not None and last[0].same(inputs):
            return body, spec, last[1], last[2]
        state, outcome = derive(name, spec, body.get("status") or {}, servers, plan_body, ptr_checks, now,
                                pool_day_figures(snapshot, name, spec, now), view, users)
        if inputs is not None:
            self._derived[name] = (inputs, state, outcome)
        return body, spec, state, outcome

    async def read_pool(self, name: str, requester: Requester | None = None) -> PoolState | None:
        """The pool as a server's reconcile needs it (addresses of its replicas); None when it does not exist.

        Read-only: when what it derives differs from what the pool last published (a new server, new
        replicas), the pool's own queue is kicked to publish it.
        """
        try:
            found = await self._read(name, [requester] if requester else [])
        except ValidationError:
            return None
        if found is None:
            return None
        body, _, state, _ = found
        published = (body.get("status") or {}).get("addresses")
        if published != state.addresses:
            self.kick(name, delay=PUBLISH_DELAY)
        return state

    async def reconcile(self, key: str) -> None:
        """Re-derive the pool's assignment and publish its status (the one writer of IpPool status)."""
        async with self._locks(key):
            try:
                found = await self._read(key, [])
            except ValidationError as error:
                body = await self.kube.get_cached(API_VERSION, "IpPool", key)
                if body is not None:
                    await self.deps.status.publish(IpPool, body, Outcome(ready=FALSE, reason="InvalidSpec",
                                                                         message=str(error), stalled=True))
                return
            if found is None:
                self._derived.pop(key, None)
                if self.monitor is not None:
                    self.monitor.forget(key)
                if self.warmup_metrics is not None:
                    self.warmup_metrics.forget(key)
                return
            body, _, state, outcome = found
            await self.deps.status.publish(IpPool, body, outcome)
            if self.warmup_metrics is not None:
                self.warmup_metrics.observe(key, state.addresses)
            for address, verdict in state.verdicts:
                if (event := needs_event(verdict)) is not None:
                    await asyncio.to_thread(self.deps.status.post_event, body, "Warning", event[0],
                                            f"{address}: {event[1]}")

    def note_view(self, state: PoolState, namespace: str, name: str, replicas: int) -> None:
        """Record what a server's reconcile read of the pool, so a pool change kicks it only when that changes."""
        self._views[(state.name, namespace, name)] = server_view(state, namespace, name, replicas)

    def forget_views(self, namespace: str, name: str) -> None:
        """A server is gone: drop what it read of every pool."""
        for key in [k for k in self._views if k[1:] == (namespace, name)]:
            self._views.pop(key, None)

    def stale_views(self, pool: str, state: PoolState | None, servers: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """The servers of `pool` whose last rendered view of it is not `state`'s (every one when it is gone)."""
        stale = []
        for server in servers:
            spec = server.get("spec") or {}
            if pool not in spec.get("ipPools", []):
                continue
            namespace, name = server["metadata"]["namespace"], server["metadata"]["name"]
            if state is None or self._views.get((pool, namespace, name)) != server_view(
                    state, namespace, name, int(spec.get("replicas", 1))):
                stale.append((namespace, name))
        return stale

    async def plan_changed(self, plan: str) -> None:
        """A plan changed: the pools that follow it recompute today's caps (keys on this queue)."""
        for pool in await self.kube.list_cached(API_VERSION, "IpPool"):
            if (pool.get("spec") or {}).get("warmupPlan") == plan:
                self.kick(pool["metadata"]["name"])
