"""SmtpServer: gather references, build the desired objects, apply them, report the truth.

The gatherer does the I/O (pools, tenants, Secrets; readiness from the pods' watch); builders in
`..builders` decide the objects; `decide()` turns what was observed into the Ready outcome.
A missing reference stops the reconcile before anything is changed: the running pods keep
their last good config and the status names what is missing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import kopf
from pydantic import ValidationError

from smtpinfra_api.meta import API_VERSION, GROUP, VERSION
from smtpinfra_api.v1alpha1 import (
    Endpoints,
    SendingAddress,
    SmtpServer,
    SmtpServerSpec,
    SmtpServerStatus,
    TenantSpec,
)
from smtpinfra_mta.config import ConfigError

from .. import kube, tenancy
from ..builders import tenant as tenant_build
from ..builders import unsubscribe, verp, workload
from ..builders.assignment import ReplicaKey
from ..builders.keys import generate_dkim_key
from ..builders.mtaconfig import ServedTenant, ServerInputs, SourceAddress, config_map_data, content_hash
from ..campaigns.suspension import suspended_reason
from ..conditions import FALSE, TRUE, UNKNOWN, Outcome
from ..kicker import Kicker, Locks
from ..settings import FULL_RESYNC_SECONDS
from ..statuswriter import post_event_soon, publish
from . import dnsrecords
from .ippool import forget_views, note_view, pool_kicker, read_pool, source_address, stale_views

log = logging.getLogger(__name__)
_locks: Locks[tuple[str, str]] = Locks()
Key = tuple[str, str]


def mta_image(spec: SmtpServerSpec) -> str:
    """spec.image, else the operator's configured default."""
    return spec.image or os.environ.get("SMTP_INFRA_MTA_IMAGE", workload.DEFAULT_MTA_IMAGE)


class MissingReference(Exception):
    """A referenced object is absent or unusable; the message names it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Gathered:
    """Everything read from the cluster for one reconcile."""

    inputs: ServerInputs
    credentials: dict[str, str]
    tls_secret: str | None
    replicas: int
    """Replicas that have an address in every pool (may be below spec.replicas)."""
    pool_shortfall: list[str] = field(default_factory=list)
    tenant_conflicts: list[str] = field(default_factory=list)
    """Selected tenants left out because another tenant owns one of their sender domains."""
    served: int = 0
    """How many tenants the config serves."""

    def settled(self) -> Gathered:
        """What `decide` needs later, without the tenants and their credentials (kept per server)."""
        return replace(self, inputs=replace(self.inputs, tenants=[]), credentials={})


def _selected(spec: SmtpServerSpec, tenant: dict[str, Any]) -> bool:
    wanted = spec.tenant_selector.match_labels
    have = tenant["metadata"].get("labels") or {}
    return all(have.get(k) == v for k, v in wanted.items())


async def _gather_tenants(spec: SmtpServerSpec) -> tuple[list[ServedTenant], dict[str, str], list[str]]:
    """Tenants this server serves, their `username:hash` lines, and the tenants left out for a conflict.

    Only what `tenancy` allows is served, the same decisions each Tenant's Ready shows: a tenant
    whose sender domain overlaps an older tenant's (else it could send as the other), whose
    namespace it may not use, or whose credentials Secret fails the check is left out, rather
    than the whole server failing to render. Tenants still without credentials wait.
    """
    served: list[ServedTenant] = []
    credentials: dict[str, str] = {}
    conflicts: list[str] = []
    secrets = {
        (s["metadata"]["namespace"], s["metadata"]["name"]): s
        for s in await kube.list_cached("v1", "Secret", label_selector=tenant_build.TENANT_LABEL)
    }
    bodies = {t["metadata"]["name"]: t for t in await kube.list_cached(API_VERSION, "Tenant")}
    everyone = tenancy.all_facts(bodies.values())
    domains = tenancy.domain_conflicts(everyone)
    operator_ns = tenancy.operator_namespace()
    for facts in everyone:
        name, body = facts.name, bodies[facts.name]
        if not _selected(spec, body):
            continue
        try:
            tspec = TenantSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            continue
        if tspec.ip_pool and tspec.ip_pool not in spec.ip_pools:
            continue  # a dedicated pool this server does not send from
        if name in domains and domains[name].with_older:
            conflicts.append(f"Tenant {name} is not served: " + tenancy.describe_overlaps(domains[name].with_older))
            continue
        namespace = await kube.find_cached("v1", "Namespace", facts.namespace)
        if tenancy.namespace_claim(facts, namespace, everyone, operator_ns) not in ("owned", "adopted"):
            continue
        secret = secrets.get((facts.namespace, tenant_build.CREDENTIALS_SECRET))
        if secret is None or not tenancy.secret_belongs(secret, name):
            continue
        checked = tenancy.check_credentials(name, secret)
        if checked.line is None:
            continue
        served.append(ServedTenant(name=name, spec=tspec, pool=tspec.ip_pool or spec.ip_pools[0],
                                   suspended_reason=suspended_reason(body)))
        credentials[name] = checked.line
    return served, credentials, conflicts


async def _gather_tls(owner: workload.Owner, spec: SmtpServerSpec) -> str | None:
    if spec.tls is None:
        return None
    if spec.tls.secret_name:
        if await kube.get_known("v1", "Secret", spec.tls.secret_name, owner.namespace) is None:
            raise MissingReference("TlsSecretNotFound",
                                   f"Secret {owner.namespace}/{spec.tls.secret_name} (spec.tls.secretName) not found")
        return spec.tls.secret_name
    issuer = spec.tls.issuer_ref
    assert issuer is not None
    if not await kube.kind_exists("cert-manager.io/v1", "Certificate"):
        raise MissingReference("CertManagerNotInstalled",
                               f"spec.tls.issuerRef names {issuer.kind.value} {issuer.name}, but cert-manager's "
                               "Certificate kind is not installed")
    issuer_ns = owner.namespace if issuer.kind.value == "Issuer" else None
    if await kube.get("cert-manager.io/v1", issuer.kind.value, issuer.name, issuer_ns) is None:
        raise MissingReference("IssuerNotFound", f"{issuer.kind.value} {issuer.name} (spec.tls.issuerRef) not found")
    secret_name = f"{owner.name}-tls"
    await kube.apply(workload.certificate(owner, spec, secret_name))
    if await kube.get_known("v1", "Secret", secret_name, owner.namespace) is None:
        raise MissingReference("CertificatePending", f"waiting for cert-manager to issue Secret {secret_name}")
    return secret_name


async def _ensure_dkim(owner: workload.Owner, spec: SmtpServerSpec) -> None:
    """Generate each missing DKIM key once; explicit Secrets must exist."""
    for key in spec.dkim.keys:
        name = workload.dkim_secret_name(owner.name, key)
        if key.secret_name:
            if await kube.get_known("v1", "Secret", name, owner.namespace) is None:
                raise MissingReference("DkimSecretNotFound",
                                       f"Secret {owner.namespace}/{name} for DKIM {key.selector}._domainkey."
                                       f"{key.domain} not found")
            continue
        if await kube.get_known("v1", "Secret", name, owner.namespace) is None:
            private, dns_value = generate_dkim_key(key.algorithm, key.rsa_key_size or 2048)
            if await kube.create(workload.dkim_secret(owner, key, private, dns_value)) is None:
                log.info("generated DKIM key %s._domainkey.%s", key.selector, key.domain)


async def _ensure_stats_token(owner: workload.Owner) -> None:
    """Create the /stats bearer token Secret once (never rewritten; delete it to rotate)."""
    name = workload.stats_token_secret_name(owner.name)
    if await kube.get_known("v1", "Secret", name, owner.namespace) is None:
        await kube.create(workload.stats_token_secret(owner, secrets.token_urlsafe(32)))


async def _ensure_verp(owner: workload.Owner) -> None:
    """Create the server's VERP key Secret once; rotation (``smtp-infra verp rotate``) edits it, we never do."""
    name = verp.secret_name(owner.name)
    if await kube.get_known("v1", "Secret", name, owner.namespace) is None and \
            await kube.create(verp.secret(owner, workload.labels(owner.name), verp.new_key())) is None:
        log.info("generated VERP key Secret %s/%s", owner.namespace, name)
    name = unsubscribe.secret_name(owner.name)  # the same once-only rule for the unsubscribe key
    if await kube.get_known("v1", "Secret", name, owner.namespace) is None and \
            await kube.create(unsubscribe.secret(owner, workload.labels(owner.name), unsubscribe.new_key())) is None:
        log.info("generated unsubscribe key Secret %s/%s", owner.namespace, name)


async def gather(owner: workload.Owner, spec: SmtpServerSpec) -> Gathered:
    """Read and check every reference; raises MissingReference naming the first missing one."""
    addresses: dict[int, list[SourceAddress]] = {i: [] for i in range(spec.replicas)}
    shortfall: list[str] = []
    for pool_name in spec.ip_pools:
        state = await read_pool(pool_name, (owner.namespace, owner.name, spec.replicas))
        if state is None:
            raise MissingReference("IpPoolNotFound", f"IpPool {pool_name} (spec.ipPools) not found")
        note_view(state, owner.namespace, owner.name, spec.replicas)
        if state.problem is not None:
            raise MissingReference(state.problem.reason, f"IpPool {pool_name}: {state.problem.message}")
        for ordinal in range(spec.replicas):
            address = state.assignment.address_of(ReplicaKey(owner.namespace, owner.name, ordinal))
            if address is None:
                shortfall.append(f"IpPool {pool_name} has no free address for replica {ordinal}")
                addresses.pop(ordinal, None)
                continue
            if ordinal in addresses:
                addresses[ordinal].append(source_address(state, pool_name, address))
    # Only a contiguous prefix of ordinals can run in a StatefulSet.
    replicas = 0
    while replicas in addresses:
        replicas += 1
    runnable = {i: addresses[i] for i in range(replicas)}
    tls_secret = await _gather_tls(owner, spec)
    await _ensure_dkim(owner, spec)
    await _ensure_stats_token(owner)
    await _ensure_verp(owner)
    tenants, credentials, conflicts = await _gather_tenants(spec)
    inputs = ServerInputs(name=owner.name, namespace=owner.namespace, spec=spec, tenants=tenants,
                          replica_addresses=runnable)
    return Gathered(inputs=inputs, credentials=credentials, tls_secret=tls_secret, replicas=replicas,
                    pool_shortfall=shortfall, tenant_conflicts=conflicts, served=len(tenants))


_DECIDED_FIELDS = frozenset({"replicas", "readyReplicas", "configHash", "sendingAddresses", "endpoints"})
"""The status fields `decide` owns (conditions and DNS are written beside them)."""


def decide(spec: SmtpServerSpec, gathered: Gathered, rollout: workload.Rollout, config_hash: str) -> Outcome:
    """The Ready outcome from what was applied and what the pods report (pure)."""
    ready, updated = rollout.ready, rollout.updated
    want = gathered.replicas
    inputs = gathered.inputs
    status = SmtpServerStatus(
        replicas=rollout.pods,
        ready_replicas=ready,
        config_hash=config_hash,
        sending_addresses=[SendingAddress(replica=i, pool=a.pool, address=a.address, ehlo_name=a.ehlo_name)
                           for i, addrs in sorted(inputs.replica_addresses.items()) for a in addrs],
        endpoints=Endpoints(
            submission=(f"{workload.submission_service_name(inputs.name)}.{inputs.namespace}.svc:"
                        f"{spec.listeners.submission.port}") if spec.listeners.submission.enabled else None,
            inbound=(f"{workload.inbound_service_name(inputs.name)}.{inputs.namespace}.svc:"
                     f"{spec.listeners.inbound.port}") if spec.listeners.inbound.enabled else None,
        ),
    )
    fields = {k: v for k, v in status.wire().items() if k in _DECIDED_FIELDS}
    rolled_out = rollout.available >= want
    config_applied = ("ConfigApplied", TRUE if rolled_out else FALSE,
                      "Applied" if rolled_out else "RollingOut",
                      f"config {config_hash} on {min(updated, want)}/{want} pods")
    tenants_served = (
        ("TenantsServed", FALSE, "SenderDomainConflict", "; ".join(gathered.tenant_conflicts))
        if gathered.tenant_conflicts else
        ("TenantsServed", TRUE, "AllServed", f"{gathered.served} tenant(s) served")
    )
    if gathered.pool_shortfall:
        return Outcome(ready=FALSE, reason="PoolTooSmall", stalled=True, fields=fields,
                       extra_conditions=(config_applied, tenants_served),
                       message="; ".join(gathered.pool_shortfall) + f"; running {want} of {spec.replicas} replicas")
    if want == 0:
        return Outcome(ready=TRUE, reason="ScaledToZero", message="spec.replicas is 0", fields=fields,
                       extra_conditions=(config_applied, tenants_served))
    if not rolled_out:
        return Outcome(ready=FALSE, reason="PodsNotReady", reconciling=True, fields=fields,
                       extra_conditions=(config_applied, tenants_served),
                       message=f"{ready}/{want} pods ready, {min(updated, want)}/{want} updated")
    return Outcome(ready=TRUE, reason="Available", fields=fields, extra_conditions=(config_applied, tenants_served),
                   message=f"{ready}/{want} pods ready, serving {gathered.served} tenant(s)")


async def reconcile_server(key: Key) -> None:
    """One full, idempotent reconcile of an SmtpServer.

    Two steps under the server's lock: rendering and applying what the pods need (config,
    credentials, StatefulSet) takes one of RENDER_SLOTS; waiting for the Services (a new
    ClusterIP is the slowest write of all under load), DNS and the status write do not, so a
    burst of new servers gets its StatefulSets out at the rate the API server takes writes.
    """
    async with _locks(key):
        _applied.pop(key, None)
        async with _render_slots:
            rolled = await _roll_out(key)
        if rolled is None:
            return
        await rolled.services  # DNS below reads the Services' addresses
        body, spec, gathered = rolled.body, rolled.spec, rolled.gathered
        rollout = workload.pod_rollout(key[1], await _pods_of(key), gathered.replicas, rolled.template)
        outcome = decide(spec, gathered, rollout, rolled.config_hash)
        dns_report = await dnsrecords.reconcile_dns(body, rolled.owner, spec, gathered.inputs)
        published = dnsrecords.with_dns(outcome, dns_report)
        await publish(SmtpServer, body, published)
        _applied[key] = Applied(body["metadata"].get("generation"), spec, gathered.settled(), rolled.config_hash,
                                rolled.template, _SettledDns.of(dns_report), at=time.monotonic(),
                                ready=published.ready)


@dataclass
class _RolledOut:
    """What the first step of a reconcile applied, for the second."""

    body: dict[str, Any]
    spec: SmtpServerSpec
    owner: workload.Owner
    gathered: Gathered
    config_hash: str
    template: str
    """The pod template hash of the StatefulSet as applied."""
    services: asyncio.Future[list[dict[str, Any]]]


async def _roll_out(key: Key) -> _RolledOut | None:
    """Read, gather, render and apply; None when done already (gone, or a problem was published)."""
    namespace, name = key
    body = await _server(key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    try:
        spec = SmtpServerSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        await publish(SmtpServer, body, Outcome(ready=FALSE, reason="InvalidSpec", message=str(error), stalled=True))
        return None
    owner = workload.Owner(name=name, namespace=namespace, uid=body["metadata"]["uid"])
    try:
        gathered = await gather(owner, spec)
        data = config_map_data(gathered.inputs)
    except MissingReference as missing:
        await publish(SmtpServer, body, Outcome(ready=FALSE, reason=missing.reason, message=missing.message,
                                                stalled=missing.reason != "CertificatePending",
                                                reconciling=missing.reason == "CertificatePending"))
        return None
    except ConfigError as error:
        await publish(SmtpServer, body, Outcome(ready=FALSE, reason="InvalidConfig", message=str(error),
                                                stalled=True))
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
        _no_pdb.discard(key)
    elif key not in _no_pdb:  # deleted once (or never there) since the operator started
        if (body.get("status") or {}).get("configHash"):  # else never reconciled: no PDB of ours
            await kube.delete("policy/v1", "PodDisruptionBudget", workload.pdb_name(name), namespace)
        _no_pdb.add(key)
    if await kube.kind_exists("monitoring.coreos.com/v1", "ServiceMonitor"):
        mounted.append(workload.service_monitor(owner))
    previous_hash = (body.get("status") or {}).get("configHash")
    services = asyncio.gather(*(_apply_service(obj) for obj in workload.services(owner, spec)))
    desired_sts = workload.statefulset(owner, spec, gathered.replicas, image, gathered.tls_secret)
    try:
        await asyncio.gather(*(kube.apply(obj) for obj in mounted))
        await kube.apply(desired_sts)
    except BaseException:
        await asyncio.gather(services, return_exceptions=True)
        raise
    if previous_hash is not None and previous_hash != config_hash:
        # A changed config is worth an Event; a new server's first one is not (its Ready Event follows).
        post_event_soon(body, "Normal", "ConfigApplied",
                        f"MTA config {config_hash} written to ConfigMap "
                        f"{workload.config_map_name(name)} ({gathered.replicas} replica(s))")
    return _RolledOut(body, spec, owner, gathered, config_hash, workload.template_hash(desired_sts), services)


SERVICE_SLOTS = 8
"""Service writes in flight. A new Service waits seconds for its ClusterIP when the API server is
busy (it took ~8 a second in the scale bench, against ~140 on an idle one); 50 such writes at once
held most request threads and starved the rest of every reconcile, without creating more per second."""
_service_slots = asyncio.Semaphore(SERVICE_SLOTS)


async def _apply_service(obj: dict[str, Any]) -> dict[str, Any]:
    async with _service_slots:
        return await kube.apply(obj)


RENDER_SLOTS = 16
"""Reconciles rendering and applying at once: each holds its tenants' specs and rendered config, and
200 at once made each slower, not the batch faster; 8 left the API server idle between requests."""
_render_slots = asyncio.Semaphore(RENDER_SLOTS)
server_kicker: Kicker[Key] = Kicker(reconcile_server, concurrency=128)
"""Reconciles of servers, from events (at once) and from tenants, pools and the resync (coalesced)."""
_no_pdb: set[Key] = set()
"""Servers whose PodDisruptionBudget is known to be absent: a single-replica server deleted it once
(a 404 or a delete) and need not ask again on every reconcile until it gets more replicas."""


@dataclass(frozen=True)
class _SettledDns(dnsrecords.DnsReport):
    """A DNS report without its records (hundreds per server with many sender domains): what
    `with_dns` needs to re-derive Ready after a rollout. status.dns is what the last reconcile
    wrote; `rendering` hands it back from the object's current status instead of keeping a copy."""

    rendered: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, report: dnsrecords.DnsReport) -> _SettledDns:
        kept = {f.name: getattr(report, f.name) for f in fields(dnsrecords.DnsReport) if f.name != "records"}
        return cls(**kept)

    def rendering(self, written: dict[str, Any]) -> _SettledDns:
        return replace(self, rendered=written)

    def status_field(self) -> dict[str, Any]:
        return self.rendered


@dataclass(frozen=True)
class Applied:
    """What the last full reconcile applied: enough to re-derive Ready from the pods alone."""

    generation: int | None
    spec: SmtpServerSpec
    gathered: Gathered
    config_hash: str
    template: str
    dns: _SettledDns
    at: float = 0.0
    """When (monotonic) this full reconcile finished."""
    ready: str = UNKNOWN
    """Ready as last published, by this reconcile or a status refresh since."""


_applied: dict[Key, Applied] = {}


def wants_resync(key: Key, now: float) -> bool:
    """Whether the periodic resync should re-derive this server in full now.

    A Ready server reconciled less than FULL_RESYNC_SECONDS ago has nothing a resync would find
    sooner: its children, StatefulSet, pods, tenants and pools are all watched. One that is not
    Ready may be waiting for something that is not (a TLS Secret, a DKIM Secret, a certificate,
    a DNS server), and is re-derived every resync.
    """
    last = _applied.get(key)
    return last is None or last.ready != TRUE or now - last.at >= FULL_RESYNC_SECONDS


async def refresh_status(key: Key) -> None:
    """Pods became ready (or not): re-derive Ready from the pods without re-applying everything.

    Pods change state several times each while they start; a full reconcile for each (some
    fifteen API calls) made readiness reach the SmtpServer's status minutes late with 200
    servers. When neither the server's spec nor the StatefulSet's spec changed since the last
    full reconcile, its result still holds and only the pods are new. Anything else (a new
    generation, no full reconcile yet) gets the full reconcile; an edited or deleted StatefulSet
    reconciles in full through the watch on our children (`start_watches`).
    """
    name = key[1]
    async with _locks(key):
        last = _applied.get(key)
        if last is not None:
            body = await _server(key)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            written = (body.get("status") or {}).get("dns")
            if body["metadata"].get("generation") == last.generation and isinstance(written, dict):
                rollout = workload.pod_rollout(name, await _pods_of(key), last.gathered.replicas, last.template)
                outcome = dnsrecords.with_dns(decide(last.spec, last.gathered, rollout, last.config_hash),
                                              last.dns.rendering(written))
                await publish(SmtpServer, body, outcome)
                _applied[key] = replace(last, ready=outcome.ready)
                return
    await reconcile_server(key)


status_kicker: Kicker[Key] = Kicker(refresh_status, concurrency=16)


async def _server(key: Key) -> dict[str, Any] | None:
    """The SmtpServer as the informer holds it (spec and status: our status writes go through to it),
    read from the API only when the informer's copy is older than the last watch event Kopf gave us."""
    namespace, name = key
    return await kube.get_cached(API_VERSION, "SmtpServer", name, namespace, generation=_seen_generation.get(key))


async def _pods_of(key: Key) -> list[dict[str, Any]]:
    """The server's pods, from the pod informer (waits for its first list)."""
    namespace, name = key
    return [p for p in await kube.list_cached("v1", "Pod", label_selector=workload.MTA_SELECTOR)
            if p["metadata"].get("namespace") == namespace
            and (p["metadata"].get("labels") or {}).get("app.kubernetes.io/instance") == name]


_pod_seen: dict[tuple[str, str], tuple[bool, str | None, bool]] = {}
"""Per pod, what readiness reads of it (Ready, template hash, terminating): other changes are not kicked."""


@kopf.on.startup()
async def start_watches(**_: Any) -> None:
    """Kick the owner's status refresh when one of its pods changes readiness, template or existence;
    reconcile it when somebody else edits or deletes one of its children, and skip re-applying
    children that nobody changed since our last apply (`kube.track_applied`)."""
    loop = asyncio.get_running_loop()

    def child_changed(meta: dict[str, Any]) -> None:  # runs in an informer's thread
        server = (meta.get("labels") or {}).get("app.kubernetes.io/instance")
        if server and meta.get("namespace"):
            loop.call_soon_threadsafe(server_kicker.kick, (meta["namespace"], server))

    kube.track_applied(workload.MTA_SELECTOR, on_changed=child_changed)

    def on_pod(type_: str, pod: dict[str, Any]) -> None:  # runs in the informer's thread
        meta = pod.get("metadata") or {}
        server = (meta.get("labels") or {}).get("app.kubernetes.io/instance")
        if not server or not meta.get("namespace"):
            return
        pod_key = (meta["namespace"], meta.get("name", ""))
        if type_ == "DELETED":
            _pod_seen.pop(pod_key, None)
        else:
            state = (any(c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or []),
                     (meta.get("annotations") or {}).get(workload.TEMPLATE_HASH_ANNOTATION),
                     bool(meta.get("deletionTimestamp")))
            if _pod_seen.get(pod_key) == state:
                return
            _pod_seen[pod_key] = state
        loop.call_soon_threadsafe(status_kicker.kick, (meta["namespace"], server))

    kube.watch_cached("v1", "Pod", on_pod, label_selector=workload.MTA_SELECTOR)

    def on_pool(type_: str, pool: dict[str, Any]) -> None:  # runs in the informer's thread
        loop.call_soon_threadsafe(pool_follow_kicker.kick, pool["metadata"]["name"])

    kube.watch_cached(API_VERSION, "IpPool", on_pool)

    def on_secret(type_: str, secret: dict[str, Any]) -> None:  # runs in the informer's thread
        meta = secret.get("metadata") or {}
        if meta.get("namespace") and meta.get("name"):
            asyncio.run_coroutine_threadsafe(_kick_secret_users(meta["namespace"], meta["name"]), loop)

    kube.watch_metadata("v1", "Secret", on_secret)


def referenced_secrets(server: Mapping[str, Any]) -> set[str]:
    """Names of the Secrets a server reads but does not own: its TLS certificate and explicit DKIM keys (pure).

    A Ready server is re-derived in full only every FULL_RESYNC_SECONDS, so a TLS Secret deleted or
    replaced by hand must reach it as a key on its queue, like a change of one of its children.
    """
    spec = server.get("spec") or {}
    names: set[str] = set()
    tls = spec.get("tls") or {}
    if tls.get("secretName"):
        names.add(str(tls["secretName"]))
    elif tls.get("issuerRef"):
        names.add(f"{server['metadata']['name']}-tls")
    for key in (spec.get("dkim") or {}).get("keys") or []:
        if isinstance(key, Mapping) and key.get("secretName"):
            names.add(str(key["secretName"]))
    return names


async def _kick_secret_users(namespace: str, name: str) -> None:
    for server in await kube.list_cached(API_VERSION, "SmtpServer"):
        if server["metadata"].get("namespace") == namespace and name in referenced_secrets(server):
            server_kicker.kick((namespace, server["metadata"]["name"]))


async def _follow_pool(pool: str) -> None:
    """A pool's spec or published status changed: re-render the servers whose addresses, names or caps did.

    The pool's controller alone writes its status; this is how the servers hear of it (a read,
    then keys on the servers' queue), without the pool knowing about servers.
    """
    state = await read_pool(pool)
    for key in stale_views(pool, state, await kube.list_cached(API_VERSION, "SmtpServer")):
        server_kicker.kick(key)


pool_follow_kicker: Kicker[str] = Kicker(_follow_pool)


_seen_generation: dict[Key, int | None] = {}
"""Per SmtpServer, the generation last reconciled from an event."""


@kopf.on.event(GROUP, VERSION, SmtpServer.plural, id="on_server")
async def on_server_event(namespace: str | None, name: str, body: kopf.Body, type: str | None, **_: Any) -> None:
    """A new spec (or the operator's start, which lists every server) reconciles at once.

    Watched without Kopf's change handlers, which would keep a copy of every spec in
    `status.kopf` (one more status write and watch event per server); a spec change is a new
    `metadata.generation`, and our own status writes never change it.
    """
    assert namespace is not None
    key = (namespace, name)
    meta = body.get("metadata") or {}
    if type == "DELETED":
        _seen_generation.pop(key, None)
        _applied.pop(key, None)
        _no_pdb.discard(key)
        forget_views(namespace, name)
        await _free_addresses(body.get("spec") or {})
        return
    generation = meta.get("generation")
    if meta.get("deletionTimestamp") or _seen_generation.get(key, -1) == generation:
        return
    _seen_generation[key] = generation
    # Queued rather than awaited here: Kopf runs at most 32 handlers per kind at once, and 200
    # new servers would otherwise wait in Kopf's stream for each other's Services.
    server_kicker.kick(key, delay=0.0)


async def _free_addresses(spec: Mapping[str, Any]) -> None:
    """Children go by garbage collection; the pools free the server's addresses."""
    for pool in spec.get("ipPools", []):
        pool_kicker.kick(pool)


__all__ = ["UNKNOWN", "decide", "reconcile_server", "server_kicker"]
