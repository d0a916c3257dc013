"""SmtpServer decisions (pure): what was gathered, the Ready outcome, what a later refresh re-derives from.

Nothing here reads or writes the cluster; `controller` gathers, applies and publishes with it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from smtpinfra_api.v1alpha1 import Endpoints, SendingAddress, SmtpServerSpec, SmtpServerStatus

from ...builders import workload
from ...builders.mtaconfig import ServerInputs
from ...conditions import FALSE, READY, TRUE, UNKNOWN, Outcome, get_condition
from ...settings import FULL_RESYNC_SECONDS
from ..dnsreport import DnsReport

Key = tuple[str, str]
"""(namespace, name) of an SmtpServer."""


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


def selected(spec: SmtpServerSpec, tenant: dict[str, Any]) -> bool:
    wanted = spec.tenant_selector.match_labels
    have = tenant["metadata"].get("labels") or {}
    return all(have.get(k) == v for k, v in wanted.items())


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


@dataclass(frozen=True)
class SettledDns(DnsReport):
    """A DNS report without its records (hundreds per server with many sender domains): what
    `with_dns` needs to re-derive Ready after a rollout. status.dns is what the last reconcile
    wrote; `rendering` hands it back from the object's current status instead of keeping a copy."""

    rendered: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, report: DnsReport) -> SettledDns:
        kept = {f.name: getattr(report, f.name) for f in fields(DnsReport) if f.name != "records"}
        return cls(**kept)

    def rendering(self, written: dict[str, Any]) -> SettledDns:
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
    dns: SettledDns
    at: float = 0.0
    """When (monotonic) this full reconcile finished."""
    ready: str = UNKNOWN
    """Ready as last published, by this reconcile or a status refresh since."""
    unpublished: DnsReport | None = None
    """The DNS report of a first status not written yet (`defers_first_status`): the status refresh
    writes it, with Ready from the pods as they are then."""


def defers_first_status(status: Mapping[str, Any] | None, outcome: Outcome) -> bool:
    """Whether a new server's first status waits for its pods (pure).

    A new server's first outcome is nearly always "pods starting", and its pods were Ready a
    second later: two writes of the whole object where one says the same. It waits PROGRESS_DELAY
    at most (then the status refresh writes whatever the pods say); anything else, a problem
    above all, is written at once, as is every status of a server that has one.
    """
    return get_condition(dict(status or {}), READY) is None and outcome.ready == FALSE \
        and outcome.reason == "PodsNotReady" and outcome.reconciling and not outcome.stalled


def wants_resync(last: Applied | None, now: float, full_resync_seconds: float = FULL_RESYNC_SECONDS) -> bool:
    """Whether the periodic resync should re-derive this server in full now.

    A Ready server reconciled less than FULL_RESYNC_SECONDS ago has nothing a resync would find
    sooner: its children, StatefulSet, pods, tenants and pools are all watched. One that is not
    Ready may be waiting for something that is not (a TLS Secret, a DKIM Secret, a certificate,
    a DNS server), and is re-derived every resync.
    """
    return last is None or last.ready != TRUE or now - last.at >= full_resync_seconds



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


PodSeen = tuple[bool, str | None, bool]
"""What readiness reads of a pod: (Ready, template hash, terminating)."""

PROGRESS_DELAY = 2.0
"""Seconds a starting pod's progress (created, not Ready yet) waits before it refreshes its server's
status. A new server's pod appeared and became Ready a second apart, and each was one more write
of the whole SmtpServer (every status write re-validates and re-encodes the object in the API
server: a third of its CPU in the scale bench)."""


def status_refresh_delay(before: PodSeen | None, now: PodSeen, window: float) -> float | None:
    """How soon a pod's change refreshes its server's status (pure); None: readiness reads nothing new.

    A pod that becomes Ready, stops being Ready or starts terminating is written within the queue's
    `window`; a starting pod's progress waits PROGRESS_DELAY, and its Ready, when it comes within
    that time, is the one write (the earlier kick wins on the queue).
    """
    if before == now:
        return None
    ready, _, terminating = now
    if not ready and not terminating and (before is None or not before[0]):
        return PROGRESS_DELAY
    return window
