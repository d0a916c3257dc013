"""SmtpServer controller: gather references, build the desired objects, apply them, report the truth.

`gather.ServerGatherer` does the reads (pools, tenants, Secrets); builders in `...builders` decide
the objects; `decide.decide()` turns what was observed into the Ready outcome. A missing reference
stops the reconcile before anything is changed: the running pods keep their last good config and
the status names what is missing.

Two queues: the full reconcile (`queue`), and a status refresh (`status_queue`) that re-derives
Ready from the pods alone while nothing else changed since the last full reconcile. Every event
source (Kopf's watch of SmtpServers, the informers of children, pods, pools and Secrets, tenants,
the resync) only puts keys on them.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from smtpinfra_api.meta import API_VERSION
from smtpinfra_api.v1alpha1 import SmtpServer, SmtpServerSpec
from smtpinfra_kube import thaw
from smtpinfra_mta.config import ConfigError

from ...builders import workload
from ...builders.mtaconfig import config_map_data, content_hash
from ...conditions import FALSE, Outcome
from ...controller import Controller, Deps
from ...dkimkeys import DkimKeys
from ...kicker import Kicker, Locks
from ...settings import FULL_RESYNC_SECONDS
from ...tenant_index import TenantIndex
from ..dns import DnsPublisher
from ..dnsreport import with_dns
from ..ippool import IpPoolController
from .decide import (
    PROGRESS_DELAY,
    Applied,
    Gathered,
    Key,
    MissingReference,
    PodSeen,
    SettledDns,
    decide,
    defers_first_status,
    mta_image,
    referenced_secrets,
    status_refresh_delay,
    wants_resync,
)
from .gather import ServerGatherer

log = logging.getLogger(__name__)

SERVICE_SLOTS = 8
"""Service writes in flight. A new Service waits seconds for its ClusterIP when the API server is
busy (it took ~8 a second in the scale bench, against ~140 on an idle one); 50 such writes at once
held most request threads and starved the rest of every reconcile, without creating more per second."""
RENDER_SLOTS = 32
"""Reconciles rendering and applying at once: each holds its tenants' specs and rendered config, and
200 at once made each slower, not the batch faster; 8 left the API server idle between requests. In
the 200-server burst 32 gave beyond-kwok p50 15.9 and 17.9 s against 22.4 s with 16 (same hour)."""


READINESS_DELAY = 0.05
"""Seconds between a pod's readiness change and its server's status refresh: long enough for the
pods of one server that change together to be one refresh, short enough not to be the largest
part of a new server's wait for Ready."""


@dataclass
class RolledOut:
    """What the first step of a reconcile applied, for the second."""

    body: dict[str, Any]
    spec: SmtpServerSpec
    owner: workload.Owner
    gathered: Gathered
    config_hash: str
    template: str
    """The pod template hash of the StatefulSet as applied."""
    services: asyncio.Future[list[dict[str, Any]]]


class SmtpServerController(Controller[Key]):
    """Keys are (namespace, name); the pools it reads are the IpPool controller's, its DNS the publisher's."""

    kind = "SmtpServer"
    CONCURRENCY = 128

    def __init__(self, deps: Deps, pools: IpPoolController, dns: DnsPublisher, tenants: TenantIndex,
                 keys: DkimKeys) -> None:
        super().__init__(deps)
        self.pools = pools
        self.dns = dns
        self.gatherer = ServerGatherer(deps.kube, pools, tenants, keys)
        self.status_queue: Kicker[Key] = self.make_queue(self.refresh_status, "SmtpServerStatus", concurrency=16)
        self.pool_queue: Kicker[str] = self.make_queue(self._follow_pool, "SmtpServerPools")
        self._locks: Locks[Key] = Locks()
        self._service_slots = asyncio.Semaphore(SERVICE_SLOTS)
        self._render_slots = asyncio.Semaphore(RENDER_SLOTS)
        self._applied: dict[Key, Applied] = {}
        self._no_pdb: set[Key] = set()
        """Servers whose PodDisruptionBudget is known to be absent: a single-replica server deleted it
        once (a 404 or a delete) and need not ask again on every reconcile until it gets more replicas."""
        self._pod_seen: dict[tuple[str, str], PodSeen] = {}
        """Per pod, what readiness reads of it (Ready, template hash, terminating): other changes are not kicked."""
        self._seen_generation: dict[Key, int | None] = {}
        """Per SmtpServer, the generation last put on the queue from an event."""

    # ------------------------------------------------------------------------- reconcile

    async def reconcile(self, key: Key) -> None:
        """One full, idempotent reconcile of an SmtpServer.

        Two steps under the server's lock: rendering and applying what the pods need (config,
        credentials, StatefulSet) takes one of RENDER_SLOTS; waiting for the Services (a new
        ClusterIP is the slowest write of all under load), DNS and the status write do not, so a
        burst of new servers gets its StatefulSets out at the rate the API server takes writes.
        """
        async with self._locks(key):
            self._applied.pop(key, None)
            async with self._render_slots:
                rolled = await self._roll_out(key)
            if rolled is None:
                return
            await rolled.services  # DNS below reads the Services' addresses
            body, spec, gathered = rolled.body, rolled.spec, rolled.gathered
            rollout = workload.pod_rollout(key[1], await self._pods_of(key), gathered.replicas, rolled.template)
            outcome = decide(spec, gathered, rollout, rolled.config_hash)
            dns_report = await self.dns.reconcile_dns(body, rolled.owner, spec, gathered.inputs)
            published = with_dns(outcome, dns_report)
            applied = Applied(body["metadata"].get("generation"), spec, gathered.settled(), rolled.config_hash,
                              rolled.template, SettledDns.of(dns_report), at=self.clock.monotonic(),
                              ready=published.ready)
            if defers_first_status(body.get("status"), published):
                self._applied[key] = replace(applied, unpublished=dns_report)
                self.status_queue.kick(key, delay=PROGRESS_DELAY)  # a pod's Ready kicks it sooner
                return
            await self.deps.status.publish(SmtpServer, body, published)
            self._applied[key] = applied

    async def _roll_out(self, key: Key) -> RolledOut | None:
        """Read, gather, render and apply; None when done already (gone, or a problem was published)."""
        namespace, name = key
        body = await self._server(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        try:
            spec = SmtpServerSpec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            await self._publish(body, Outcome(ready=FALSE, reason="InvalidSpec", message=str(error), stalled=True))
            return None
        owner = workload.Owner(name=name, namespace=namespace, uid=body["metadata"]["uid"])
        try:
            gathered = await self.gatherer.gather(owner, spec)
            data = config_map_data(gathered.inputs)
        except MissingReference as missing:
            await self._publish(body, Outcome(ready=FALSE, reason=missing.reason, message=missing.message,
                                              stalled=missing.reason != "CertificatePending",
                                              reconciling=missing.reason == "CertificatePending"))
            return None
        except ConfigError as error:
            await self._publish(body, Outcome(ready=FALSE, reason="InvalidConfig", message=str(error), stalled=True))
            return None
        config_hash = content_hash(data)
        image = mta_image(spec)
        # What the pods mount first, then the StatefulSet, so a new pod never starts on an old config.
        # The Services go alongside and do not hold up the StatefulSet; objects within a step are
        # applied concurrently.
        mounted: list[dict[str, Any]] = [
            workload.credentials_secret(owner, gathered.credentials),
            workload.config_map(owner, data),
        ]
        if spec.replicas > 1:
            mounted.append(workload.pod_disruption_budget(owner))
            self._no_pdb.discard(key)
        elif key not in self._no_pdb:  # deleted once (or never there) since the operator started
            if (body.get("status") or {}).get("configHash"):  # else never reconciled: no PDB of ours
                await self.kube.delete("policy/v1", "PodDisruptionBudget", workload.pdb_name(name), namespace)
            self._no_pdb.add(key)
        if await self.kube.kind_exists("monitoring.coreos.com/v1", "ServiceMonitor"):
            mounted.append(workload.service_monitor(owner))
        previous_hash = (body.get("status") or {}).get("configHash")
        services = asyncio.gather(*(self._apply_service(obj) for obj in workload.services(owner, spec)))
        desired_sts = workload.statefulset(owner, spec, gathered.replicas, image, gathered.tls_secret)
        try:
            await asyncio.gather(*(self.kube.apply(obj) for obj in mounted))
            await self.kube.apply(desired_sts)
        except BaseException:
            await asyncio.gather(services, return_exceptions=True)
            raise
        if previous_hash is not None and previous_hash != config_hash:
            # A changed config is worth an Event; a new server's first one is not (its Ready Event follows).
            self.deps.status.post_event_soon(body, "Normal", "ConfigApplied",
                            f"MTA config {config_hash} written to ConfigMap "
                            f"{workload.config_map_name(name)} ({gathered.replicas} replica(s))")
        return RolledOut(body, spec, owner, gathered, config_hash, workload.template_hash(desired_sts), services)

    async def _publish(self, body: Mapping[str, Any], outcome: Outcome) -> None:
        await self.deps.status.publish(SmtpServer, body, outcome)

    async def _apply_service(self, obj: dict[str, Any]) -> dict[str, Any]:
        async with self._service_slots:
            return await self.kube.apply(obj)

    def wants_resync(self, key: Key) -> bool:
        """Whether the periodic resync should re-derive this server in full now (`decide.wants_resync`)."""
        return wants_resync(self._applied.get(key), self.clock.monotonic(), FULL_RESYNC_SECONDS)

    async def refresh_status(self, key: Key) -> None:
        """Pods became ready (or not): re-derive Ready from the pods without re-applying everything.

        Pods change state several times each while they start; a full reconcile for each (some
        fifteen API calls) made readiness reach the SmtpServer's status minutes late with 200
        servers. When neither the server's spec nor the StatefulSet's spec changed since the last
        full reconcile, its result still holds and only the pods are new. Anything else (a new
        generation, no full reconcile yet) gets the full reconcile; an edited or deleted StatefulSet
        reconciles in full through the watch on our children (`start_watches`).
        """
        name = key[1]
        async with self._locks(key):
            last = self._applied.get(key)
            if last is not None:
                body = await self._server(key)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    return
                written = thaw((body.get("status") or {}).get("dns"))
                dns = last.unpublished or (last.dns.rendering(written) if isinstance(written, dict) else None)
                if body["metadata"].get("generation") == last.generation and dns is not None:
                    rollout = workload.pod_rollout(name, await self._pods_of(key), last.gathered.replicas,
                                                   last.template)
                    outcome = with_dns(decide(last.spec, last.gathered, rollout, last.config_hash), dns)
                    await self.deps.status.publish(SmtpServer, body, outcome)
                    self._applied[key] = replace(last, ready=outcome.ready, unpublished=None)
                    return
        await self.reconcile(key)

    async def _server(self, key: Key) -> dict[str, Any] | None:
        """The SmtpServer as the informer holds it (spec and status: our status writes go through to it),
        read from the API only when the informer's copy is older than the last watch event Kopf gave us."""
        namespace, name = key
        return await self.kube.get_cached(API_VERSION, "SmtpServer", name, namespace,
                                          generation=self._seen_generation.get(key))

    async def _pods_of(self, key: Key) -> list[dict[str, Any]]:
        """The server's pods, from the pod informer (waits for its first list)."""
        namespace, name = key
        return [p for p in await self.kube.list_cached("v1", "Pod", label_selector=workload.MTA_SELECTOR)
                if p["metadata"].get("namespace") == namespace
                and (p["metadata"].get("labels") or {}).get("app.kubernetes.io/instance") == name]

    # --------------------------------------------------------------------- event sources

    def on_event(self, namespace: str, name: str, body: Mapping[str, Any], type_: str | None) -> None:
        """Kopf's watch of SmtpServers: a new spec (or the operator's start, which lists every server) is a key.

        Watched without Kopf's change handlers, which would keep a copy of every spec in
        `status.kopf` (one more status write and watch event per server); a spec change is a new
        `metadata.generation`, and our own status writes never change it.
        """
        key = (namespace, name)
        meta = body.get("metadata") or {}
        if type_ == "DELETED":
            self._seen_generation.pop(key, None)
            self._applied.pop(key, None)
            self._no_pdb.discard(key)
            self.pools.forget_views(namespace, name)
            self.dns.forget(str(meta.get("uid", "")))
            for pool in (body.get("spec") or {}).get("ipPools", []):  # children go by garbage collection;
                self.pools.kick(pool)  # the pools free the server's addresses
            return
        generation = meta.get("generation")
        if meta.get("deletionTimestamp") or self._seen_generation.get(key, -1) == generation:
            return
        self._seen_generation[key] = generation
        # The event's object is at least as new as the informer's copy (which Kopf's own watch may
        # be ahead of): handed to the informers, the reconcile reads it there instead of a GET.
        self.kube.remember(copy.deepcopy(dict(body)))
        self.kick(key, delay=0.0)

    def start_watches(self, loop: asyncio.AbstractEventLoop) -> None:
        """Kick the owner's status refresh when one of its pods changes readiness, template or existence;
        reconcile it when somebody else edits or deletes one of its children, and skip re-applying
        children that nobody changed since our last apply (`track_applied`)."""

        def child_changed(meta: dict[str, Any]) -> None:  # runs in an informer's thread
            server = (meta.get("labels") or {}).get("app.kubernetes.io/instance")
            if server and meta.get("namespace"):
                loop.call_soon_threadsafe(self.kick, (meta["namespace"], server))

        self.kube.track_applied(workload.MTA_SELECTOR, on_changed=child_changed)

        def on_pod(type_: str, pod: dict[str, Any]) -> None:  # runs in the informer's thread
            meta = pod.get("metadata") or {}
            server = (meta.get("labels") or {}).get("app.kubernetes.io/instance")
            if not server or not meta.get("namespace"):
                return
            pod_key = (meta["namespace"], meta.get("name", ""))
            if type_ == "DELETED":
                self._pod_seen.pop(pod_key, None)
            else:
                state = (any(c.get("type") == "Ready" and c.get("status") == "True"
                             for c in (pod.get("status") or {}).get("conditions") or []),
                         (meta.get("annotations") or {}).get(workload.TEMPLATE_HASH_ANNOTATION),
                         bool(meta.get("deletionTimestamp")))
                before = self._pod_seen.get(pod_key)
                delay = status_refresh_delay(before, state, READINESS_DELAY)
                if delay is None:
                    return
                self._pod_seen[pod_key] = state
                loop.call_soon_threadsafe(functools.partial(self.status_queue.kick, (meta["namespace"], server),
                                                            delay=delay))
                return
            loop.call_soon_threadsafe(self.status_queue.kick, (meta["namespace"], server))

        self.kube.watch_cached("v1", "Pod", on_pod, label_selector=workload.MTA_SELECTOR)

        def on_pool(type_: str, pool: dict[str, Any]) -> None:  # runs in the informer's thread
            loop.call_soon_threadsafe(self.pool_queue.kick, pool["metadata"]["name"])

        self.kube.watch_cached(API_VERSION, "IpPool", on_pool)

        def on_secret(type_: str, secret: dict[str, Any]) -> None:  # runs in the informer's thread
            meta = secret.get("metadata") or {}
            if meta.get("namespace") and meta.get("name"):
                asyncio.run_coroutine_threadsafe(self._kick_secret_users(meta["namespace"], meta["name"]), loop)

        self.kube.watch_metadata("v1", "Secret", on_secret)

    async def _kick_secret_users(self, namespace: str, name: str) -> None:
        for server in await self.kube.list_cached(API_VERSION, "SmtpServer"):
            if server["metadata"].get("namespace") == namespace and name in referenced_secrets(server):
                self.kick((namespace, server["metadata"]["name"]))

    async def _follow_pool(self, pool: str) -> None:
        """A pool's spec or published status changed: re-render the servers whose addresses, names or caps did.

        The pool's controller alone writes its status; this is how the servers hear of it (a read,
        then keys on the servers' queue), without the pool knowing about servers.
        """
        state = await self.pools.read_pool(pool)
        for key in self.pools.stale_views(pool, state, await self.kube.list_cached(API_VERSION, "SmtpServer")):
            self.kick(key)
