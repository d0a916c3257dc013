"""The report as data, built from the objects and stats that were read (pure, no I/O).

Every figure comes from a resource's status or spec, or from a pod's /stats; nothing is
estimated. A value the cluster does not report (yet) stays None and prints as "-".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Condition:
    """The Ready summary of one resource, as the operator wrote it."""

    status: str
    """True, False, Unknown, or "-" when no status was written yet."""
    reason: str
    message: str
    stalled: bool
    observed: bool
    """status.observedGeneration is the current metadata.generation."""


@dataclass(frozen=True)
class StatsResult:
    """One MTA pod's /stats: the decoded JSON, or why it could not be read."""

    stats: Mapping[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class PodRow:
    name: str
    phase: str
    ready: bool
    ip: str | None
    queue: int | None = None
    oldest_age_seconds: float | None = None
    sessions: int | None = None
    stats_error: str | None = None


@dataclass(frozen=True)
class ServerRow:
    namespace: str
    name: str
    hostname: str
    condition: Condition
    replicas: int | None
    ready_replicas: int | None
    pools: tuple[str, ...]
    pods: tuple[PodRow, ...]


@dataclass(frozen=True)
class AddressRow:
    address: str
    assigned_to: str | None
    ptr_ok: bool | None
    warmup_day: int | None
    daily_cap: int | None
    listings: tuple[str, ...]
    quarantined: bool


@dataclass(frozen=True)
class PoolRow:
    name: str
    condition: Condition
    warmup_plan: str | None
    addresses: tuple[AddressRow, ...]


@dataclass(frozen=True)
class TenantRow:
    name: str
    condition: Condition
    state: str | None
    suspended: bool
    sent_this_hour: int | None
    sent_today: int | None
    quota_per_hour: int | None
    quota_per_day: int | None
    bounce_rate: str | None
    complaint_rate: str | None
    max_bounce_rate: str | None
    max_complaint_rate: str | None
    partial: bool


@dataclass(frozen=True)
class CampaignRow:
    namespace: str
    name: str
    tenant: str | None
    condition: Condition
    phase: str | None
    suspended: bool
    recipients: int | None
    """Known up front only for inline recipients."""
    counters: Mapping[str, int]

    @property
    def done(self) -> int:
        """Recipients with a final outcome."""
        return sum(self.counters.get(k, 0) for k in ("delivered", "bounced", "suppressed"))


@dataclass(frozen=True)
class Report:
    at: str
    servers: tuple[ServerRow, ...] = ()
    pools: tuple[PoolRow, ...] = ()
    tenants: tuple[TenantRow, ...] = ()
    campaigns: tuple[CampaignRow, ...] = ()
    warnings: tuple[str, ...] = field(default=())


def condition(obj: Mapping[str, Any]) -> Condition:
    status = obj.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready") or {}
    stalled = conditions.get("Stalled") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    return Condition(status=str(ready.get("status", "-")), reason=str(ready.get("reason", "")),
                     message=str(ready.get("message", "")), stalled=stalled.get("status") == "True",
                     observed=observed is not None and (generation is None or observed >= generation))


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def pod_row(pod: Mapping[str, Any], stats: StatsResult | None) -> PodRow:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    data = (stats.stats if stats else None) or {}
    queue = data.get("queue") or {}
    return PodRow(name=str(meta.get("name")), phase=str(status.get("phase", "Unknown")), ready=ready,
                  ip=status.get("podIP"), queue=_int(queue.get("messages")),
                  oldest_age_seconds=queue.get("oldest_age_seconds") if stats and stats.stats else None,
                  sessions=_int(data.get("sessions")), stats_error=stats.error if stats else None)


def server_row(obj: Mapping[str, Any], pods: Sequence[Mapping[str, Any]],
               stats: Mapping[tuple[str, str], StatsResult]) -> ServerRow:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    mine = [p for p in pods if p["metadata"].get("namespace") == meta.get("namespace")
            and (p["metadata"].get("labels") or {}).get("app.kubernetes.io/instance") == meta["name"]]
    rows = tuple(pod_row(p, stats.get((meta["namespace"], p["metadata"]["name"])))
                 for p in sorted(mine, key=lambda p: str(p["metadata"]["name"])))
    return ServerRow(namespace=meta.get("namespace", ""), name=meta["name"], hostname=str(spec.get("hostname", "")),
                     condition=condition(obj), replicas=_int(spec.get("replicas")),
                     ready_replicas=_int(status.get("readyReplicas")), pools=tuple(spec.get("ipPools") or ()),
                     pods=rows)


def pool_row(obj: Mapping[str, Any]) -> PoolRow:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    reported = {a.get("address"): a for a in status.get("addresses") or []}
    rows = []
    for address in spec.get("addresses") or []:
        a = reported.get(address) or {}
        rows.append(AddressRow(address=address, assigned_to=a.get("assignedTo"), ptr_ok=a.get("ptrOk"),
                               warmup_day=_int(a.get("warmupDay")), daily_cap=_int(a.get("dailyCap")),
                               listings=tuple(a.get("listings") or ()), quarantined=bool(a.get("quarantined"))))
    return PoolRow(name=obj["metadata"]["name"], condition=condition(obj), warmup_plan=spec.get("warmupPlan"),
                   addresses=tuple(rows))


def tenant_row(obj: Mapping[str, Any]) -> TenantRow:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    usage, quotas, suspension = status.get("usage") or {}, spec.get("quotas") or {}, spec.get("suspension") or {}
    return TenantRow(name=obj["metadata"]["name"], condition=condition(obj), state=status.get("state"),
                     suspended=bool(spec.get("suspended")), sent_this_hour=_int(usage.get("sentThisHour")),
                     sent_today=_int(usage.get("sentToday")), quota_per_hour=_int(quotas.get("perHour")),
                     quota_per_day=_int(quotas.get("perDay")), bounce_rate=usage.get("bounceRate"),
                     complaint_rate=usage.get("complaintRate"), max_bounce_rate=suspension.get("maxBounceRate"),
                     max_complaint_rate=suspension.get("maxComplaintRate"), partial=bool(usage.get("partial")))


def campaign_row(obj: Mapping[str, Any]) -> CampaignRow:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    inline = (spec.get("recipients") or {}).get("inline")
    counters = {k: int(v) for k, v in (status.get("counters") or {}).items() if isinstance(v, int)}
    return CampaignRow(namespace=meta.get("namespace", ""), name=meta["name"], tenant=spec.get("tenant"),
                       condition=condition(obj), phase=status.get("phase"), suspended=bool(spec.get("suspend")),
                       recipients=len(inline) if isinstance(inline, list) else None, counters=counters)


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return (str(obj["metadata"].get("namespace", "")), str(obj["metadata"]["name"]))


def build(at: str, objects: Mapping[str, Sequence[Mapping[str, Any]]], pods: Sequence[Mapping[str, Any]],
          stats: Mapping[tuple[str, str], StatsResult], warnings: Sequence[str] = ()) -> Report:
    """The report from what was gathered: ``objects`` by kind, the MTA pods, each pod's /stats."""
    return Report(
        at=at,
        servers=tuple(server_row(o, pods, stats) for o in sorted(objects.get("SmtpServer", ()), key=_key)),
        pools=tuple(pool_row(o) for o in sorted(objects.get("IpPool", ()), key=_key)),
        tenants=tuple(tenant_row(o) for o in sorted(objects.get("Tenant", ()), key=_key)),
        campaigns=tuple(campaign_row(o) for o in sorted(objects.get("Campaign", ()), key=_key)),
        warnings=tuple(warnings),
    )
