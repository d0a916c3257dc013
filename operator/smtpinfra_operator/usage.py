"""Tenant usage: every running MTA pod's /stats, summed per tenant into Tenant `status.usage`.

Two layers, as everywhere in the operator:

- `UsageCollector.collect()` does the I/O once per resync: it lists the MTA pods, reads `/stats` of each
  running one concurrently (short timeout; an unreachable pod is recorded, never raised) and
  keeps the result as the latest `Snapshot`.
- `tenant_usage()` is pure: one tenant's `status.usage` from a snapshot and the previous usage.
  The figures are the MTA's quota counters (recipients accepted in the current UTC hour and
  day), summed over the pods; pods of servers that select the tenant but did not answer make
  the figures `partial`. Unchanged figures return the previous usage as it was (observedAt
  included), so an idle tenant costs no status write.

The MTA serves `/stats` on its HTTP port, which the operator renders into its config
(`builders.mtaconfig.HTTP_PORT`); the pods are reached on their pod IPs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from smtpinfra_api.meta import API_VERSION
from smtpinfra_api.v1alpha1 import TenantSpec
from smtpinfra_kube import KubeApi

from .builders import workload
from .builders.mtaconfig import DELIVERY_HTTP_PORT, HTTP_PORT
from .conditions import now_rfc3339

log = logging.getLogger(__name__)

STATS_TIMEOUT = 2.0
"""Seconds to wait for one pod's /stats."""
STATS_CONCURRENCY = 32
"""Pods read at once."""
MAX_UNREACHABLE_NAMED = 10

Fetch = Callable[[str, int, str | None], Awaitable[Mapping[str, Any]]]
"""(pod IP, port, bearer token) → the decoded /stats JSON; raises when the pod cannot be read."""


@dataclass(frozen=True)
class ServerSelection:
    """What decides which tenants a server serves (its spec's tenantSelector and pools)."""

    namespace: str
    name: str
    match_labels: Mapping[str, str]
    ip_pools: tuple[str, ...]

    def serves(self, labels: Mapping[str, str], spec: TenantSpec) -> bool:
        """Whether the server selects the tenant (the rule `controllers.smtpserver` renders configs by)."""
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        return not spec.ip_pool or spec.ip_pool in self.ip_pools


@dataclass(frozen=True)
class PodReport:
    """One running MTA pod and what its /stats said (None: it did not answer)."""

    namespace: str
    pod: str
    server: str
    tenants: Mapping[str, Any] | None
    """The `tenants` object of /stats: {"hour": id, "day": id, "accepted": {tenant: {"hour": n, "day": n}}}."""
    addresses: Mapping[str, Any] | None = None
    """The delivering process's /stats `addresses` (figures per source address, provider and day); None:
    not read."""
    campaigns: Mapping[str, Any] | None = None
    """The delivering process's /stats `campaigns`: {"<namespace>/<campaign>": {"accepted": n, "delivered": n,
    ...}}; None: not read."""


@dataclass(frozen=True)
class Snapshot:
    """Every MTA pod's report at one moment."""

    at: str
    """When the pods were read (RFC 3339)."""
    servers: tuple[ServerSelection, ...]
    reports: tuple[PodReport, ...]
    taken: datetime | None = None
    """When the reading began on the operator's (and the MTAs') clock: days before this one are final in it."""


def _percent(used: int, quota: int | None) -> str | None:
    if not quota:
        return None
    return f"{100 * used / quota:.1f}"


def _without_time(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (usage or {}).items() if k != "observedAt"}


def sum_accepted(reports: Iterable[PodReport], tenant: str) -> tuple[int, int, bool]:
    """(this hour, today, reported) for one tenant over the pods' reports (pure).

    A pod still in an older hour or day (its clock or its last write lags) counts for nothing
    in that window: only the newest window any pod reports is summed.
    """
    answered = [r.tenants for r in reports if r.tenants]
    hour_id = max((str(t.get("hour", "")) for t in answered), default="")
    day_id = max((str(t.get("day", "")) for t in answered), default="")
    hour = day = 0
    reported = False
    for t in answered:
        counts = (t.get("accepted") or {}).get(tenant)
        if not isinstance(counts, Mapping):
            continue
        reported = True
        if t.get("hour") == hour_id:
            hour += int(counts.get("hour") or 0)
        if t.get("day") == day_id:
            day += int(counts.get("day") or 0)
    return hour, day, reported


def tenant_usage(name: str, labels: Mapping[str, str], spec: TenantSpec, snapshot: Snapshot | None,
                 previous: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The tenant's `status.usage` (camelCase) from a snapshot; None while nothing is known (pure).

    - No snapshot yet, or no pod that serves the tenant answered and nothing was written
      before: None (the field stays absent).
    - Pods answered: their sums; `partial` with the pods that did not, when some did not.
    - Serving pods exist but none answered: the previous figures, marked partial.
    - No running pod serves the tenant any more: zeros (nothing is being sent).
    Equal figures return `previous` itself, so `observedAt` only moves when something changed.
    """
    if snapshot is None:
        return dict(previous) if previous else None
    serving = {(s.namespace, s.name) for s in snapshot.servers if s.serves(labels, spec)}
    mine = [r for r in snapshot.reports if (r.namespace, r.server) in serving]
    silent = sorted(f"{r.namespace}/{r.pod}" for r in mine if r.tenants is None)
    hour, day, reported = sum_accepted(snapshot.reports, name)
    answered = any(r.tenants is not None for r in mine)
    if not answered and not reported:
        if not previous:
            return None
        if silent:  # nothing could be read: keep the last figures, say they are incomplete
            stale = {**previous, "partial": True, "unreachablePods": silent[:MAX_UNREACHABLE_NAMED]}
            return dict(previous) if _without_time(stale) == _without_time(previous) else stale
    usage: dict[str, Any] = {"sentThisHour": hour, "sentToday": day}
    if (used := _percent(hour, spec.quotas.per_hour)) is not None:
        usage["hourlyQuotaUsed"] = used
    if (used := _percent(day, spec.quotas.per_day)) is not None:
        usage["dailyQuotaUsed"] = used
    if silent:
        usage.update(partial=True, unreachablePods=silent[:MAX_UNREACHABLE_NAMED])
    for kept in ("bounceRate", "complaintRate"):  # written by other parts of the operator, not ours
        if previous and kept in previous:
            usage[kept] = previous[kept]
    if previous and _without_time(previous) == usage:
        return dict(previous)
    usage["observedAt"] = snapshot.at
    return usage


# --- I/O -------------------------------------------------------------------------------------


async def fetch_stats(ip: str, port: int, token: str | None = None) -> Mapping[str, Any]:
    """GET http://ip:port/stats (HTTP/1.0, the MTA's own tiny server) within STATS_TIMEOUT.

    ``token`` is the server's `<server>-stats-token` Secret, which the MTA requires as a bearer token.
    """

    async def call() -> Mapping[str, Any]:
        reader, writer = await asyncio.open_connection(ip, port)
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        try:
            writer.write(f"GET /stats HTTP/1.0\r\nHost: {ip}:{port}\r\nAccept: application/json\r\n{auth}\r\n"
                         .encode())
            await writer.drain()
            raw = await reader.read(4 << 20)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] != b"200":
            raise OSError(f"/stats answered {head[:64]!r}")
        result: Mapping[str, Any] = json.loads(body)
        return result

    return await asyncio.wait_for(call(), STATS_TIMEOUT)


async def read_pod(fetch: Fetch, ip: str, token: str | None,
                   pod: str = "") -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    """(tenants, addresses) of one pod's /stats; None for what could not be read (see `read_pod_stats`)."""
    tenants, addresses, _ = await read_pod_stats(fetch, ip, token, pod)
    return tenants, addresses


async def read_pod_stats(fetch: Fetch, ip: str, token: str | None, pod: str = "") -> tuple[
        Mapping[str, Any] | None, Mapping[str, Any] | None, Mapping[str, Any] | None]:
    """(tenants, addresses, campaigns) of one pod's /stats; None for what could not be read.

    The per-address figures and the per-campaign outcomes live in the delivering process: on the main
    port when the pod runs one process, else on the delivery process's own port (the accepting process
    reports no "addresses" and no campaigns).
    """
    try:
        stats = await fetch(ip, HTTP_PORT, token)
    except (OSError, TimeoutError, ValueError) as error:
        log.debug("no stats from pod %s (%s): %s", pod, ip, error)
        return None, None, None
    tenants = stats.get("tenants")
    tenants = tenants if isinstance(tenants, Mapping) else {}
    addresses = stats.get("addresses")
    if isinstance(addresses, Mapping):
        campaigns = stats.get("campaigns")
        return tenants, addresses, campaigns if isinstance(campaigns, Mapping) else {}
    try:
        delivery = await fetch(ip, DELIVERY_HTTP_PORT, token)
    except (OSError, TimeoutError, ValueError) as error:
        log.debug("no delivery stats from pod %s (%s): %s", pod, ip, error)
        return tenants, None, None
    addresses, campaigns = delivery.get("addresses"), delivery.get("campaigns")
    return (tenants, addresses if isinstance(addresses, Mapping) else {},
            campaigns if isinstance(campaigns, Mapping) else {})


def _selection(server: Mapping[str, Any]) -> ServerSelection:
    spec = server.get("spec") or {}
    meta = server["metadata"]
    return ServerSelection(namespace=meta["namespace"], name=meta["name"],
                           match_labels=dict((spec.get("tenantSelector") or {}).get("matchLabels") or {}),
                           ip_pools=tuple(spec.get("ipPools") or ()))


class UsageCollector:
    """Reads the MTA pods' /stats once per resync and keeps the latest snapshot (for the Tenant controller)."""

    def __init__(self, kube: KubeApi, fetch: Fetch = fetch_stats,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.kube = kube
        self._fetch = fetch
        self._now = now
        self._latest: Snapshot | None = None

    def latest(self) -> Snapshot | None:
        """The most recent snapshot (None before the first collection)."""
        return self._latest

    async def _stats_token(self, namespace: str, server: str) -> str | None:
        """The server's /stats bearer token from its operator-managed Secret (None while it does not exist)."""
        secret = await self.kube.get_known("v1", "Secret", workload.stats_token_secret_name(server), namespace)
        value = ((secret or {}).get("data") or {}).get("token")
        return base64.b64decode(value).decode().strip() if value else None

    async def collect(self) -> Snapshot:
        """Read every running MTA pod's /stats and keep the result as the latest snapshot."""
        taken = self._now()
        servers = tuple(_selection(s) for s in await self.kube.list_cached(API_VERSION, "SmtpServer")
                        if not s["metadata"].get("deletionTimestamp"))
        known = {(s.namespace, s.name) for s in servers}
        pods = []
        for pod in await self.kube.list_cached("v1", "Pod", label_selector=workload.MTA_SELECTOR):
            meta, status = pod["metadata"], pod.get("status") or {}
            server = (meta.get("labels") or {}).get("app.kubernetes.io/instance", "")
            if (meta["namespace"], server) in known and status.get("phase") == "Running" and status.get("podIP"):
                pods.append((meta["namespace"], meta["name"], server, status["podIP"]))
        slots = asyncio.Semaphore(STATS_CONCURRENCY)
        tokens = {key: await self._stats_token(*key) for key in {(p[0], p[2]) for p in pods}}
        fetch = self._fetch

        async def read(namespace: str, name: str, server: str, ip: str) -> PodReport:
            async with slots:
                tenants, addresses, campaigns = await read_pod_stats(fetch, ip, tokens.get((namespace, server)),
                                                                     f"{namespace}/{name}")
                return PodReport(namespace, name, server, tenants, addresses, campaigns)

        reports = await asyncio.gather(*(read(*p) for p in pods))
        self._latest = Snapshot(at=now_rfc3339(), servers=servers, reports=tuple(reports), taken=taken)
        return self._latest

    def campaign_stats(self) -> list[Mapping[str, Any] | None]:
        """Each pod's `campaigns` object in the latest snapshot (None for a pod that did not answer)."""
        return [r.campaigns for r in self._latest.reports] if self._latest is not None else []
