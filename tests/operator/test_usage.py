"""Tenant usage from the MTA pods' /stats: summing and the status.usage builder (pure)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from smtpinfra_api.v1alpha1 import TenantSpec, TenantStatus
from smtpinfra_operator.builders.mtaconfig import DELIVERY_HTTP_PORT, HTTP_PORT
from smtpinfra_operator.usage import (
    PodReport,
    ServerSelection,
    Snapshot,
    fetch_stats,
    read_pod,
    sum_accepted,
    tenant_usage,
)

pytestmark = pytest.mark.operator

T0, T1 = "2026-11-26T10:00:00Z", "2026-11-26T10:01:00Z"
HOUR, DAY = "2026-11-26T10", "2026-11-26"
ACME = TenantSpec.model_validate({"displayName": "Acme", "senderDomains": ["acme.test"],
                                  "quotas": {"perHour": 200, "perDay": 1000}})
LABELS = {"tier": "gold"}
GOLD = ServerSelection("mail", "gold", {"tier": "gold"}, ("pool-a",))
OTHER = ServerSelection("mail", "silver", {"tier": "silver"}, ("pool-a",))


def stats(accepted: dict[str, tuple[int, int]], hour: str = HOUR, day: str = DAY) -> dict[str, Any]:
    return {"hour": hour, "day": day, "accepted": {t: {"hour": h, "day": d} for t, (h, d) in accepted.items()}}


def report(pod: str, tenants: dict[str, Any] | None, server: str = "gold") -> PodReport:
    return PodReport("mail", pod, server, tenants)


def snapshot(*reports: PodReport, at: str = T0) -> Snapshot:
    return Snapshot(at=at, servers=(GOLD, OTHER), reports=reports)


def test_sums_over_pods_and_computes_quota_percentages():
    snap = snapshot(report("gold-0", stats({"acme": (10, 100), "beta": (1, 1)})),
                    report("gold-1", stats({"acme": (5, 50)})))
    usage = tenant_usage("acme", LABELS, ACME, snap, None)
    assert usage == {"sentThisHour": 15, "sentToday": 150, "hourlyQuotaUsed": "7.5", "dailyQuotaUsed": "15.0",
                     "observedAt": T0}
    TenantStatus.model_validate({"usage": usage})  # the CRD's schema accepts it


def test_unchanged_figures_keep_the_previous_usage_as_is():
    """No status write for an idle tenant: the same figures return the previous object, observedAt included."""
    first = tenant_usage("acme", LABELS, ACME, snapshot(report("gold-0", stats({"acme": (3, 4)}))), None)
    again = tenant_usage("acme", LABELS, ACME, snapshot(report("gold-0", stats({"acme": (3, 4)})), at=T1), first)
    assert again == first and again is not None and again["observedAt"] == T0
    moved = tenant_usage("acme", LABELS, ACME, snapshot(report("gold-0", stats({"acme": (4, 5)})), at=T1), first)
    assert moved is not None and (moved["sentToday"], moved["observedAt"]) == (5, T1)


def test_an_unreachable_pod_makes_the_figures_partial():
    snap = snapshot(report("gold-0", stats({"acme": (2, 2)})), report("gold-1", None))
    usage = tenant_usage("acme", LABELS, ACME, snap, None)
    assert usage is not None
    assert (usage["sentToday"], usage["partial"], usage["unreachablePods"]) == (2, True, ["mail/gold-1"])
    # A silent pod of a server that does not serve the tenant does not concern it.
    quiet = snapshot(report("gold-0", stats({"acme": (2, 2)})), report("silver-0", None, server="silver"))
    assert "partial" not in (tenant_usage("acme", LABELS, ACME, quiet, None) or {})


def test_nothing_answered():
    silent = snapshot(report("gold-0", None))
    assert tenant_usage("acme", LABELS, ACME, silent, None) is None  # nothing known: no field
    before = {"sentThisHour": 7, "sentToday": 9, "observedAt": T0}
    kept = tenant_usage("acme", LABELS, ACME, silent, before)
    assert kept == {**before, "partial": True, "unreachablePods": ["mail/gold-0"]}
    assert tenant_usage("acme", LABELS, ACME, None, before) == before  # no snapshot yet
    # No running pod serves it any more: nothing is being sent.
    gone = tenant_usage("acme", LABELS, ACME, snapshot(), before)
    assert gone is not None and (gone["sentThisHour"], gone["sentToday"]) == (0, 0)


def test_a_pod_in_an_older_window_counts_nothing_for_it():
    reports = [report("gold-0", stats({"acme": (4, 40)}, hour="2026-11-26T11")),
               report("gold-1", stats({"acme": (9, 30)}, hour="2026-11-26T10"))]
    assert sum_accepted(reports, "acme") == (4, 70, True)
    assert sum_accepted(reports, "nobody") == (0, 0, False)


def test_dedicated_pool_tenants_are_served_only_by_servers_with_that_pool():
    dedicated = TenantSpec.model_validate({"displayName": "D", "senderDomains": ["d.test"], "plan": "Dedicated",
                                           "ipPool": "pool-b"})
    assert not GOLD.serves(LABELS, dedicated)
    assert ServerSelection("mail", "b", {}, ("pool-b",)).serves(LABELS, dedicated)


def test_fetch_stats_reads_json_over_http():
    body = {"tenants": stats({"acme": (1, 2)})}

    async def run() -> dict[str, Any]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            data = json.dumps(body).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(data) + data)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return dict(await fetch_stats("127.0.0.1", port))

    assert asyncio.run(run()) == body


def test_address_figures_come_from_the_delivering_process():
    figures = {"192.0.2.1": {"days": {"2026-06-01": {"gmail": {"sent": 3}}}, "hour": {}}}
    tenants = stats({"acme": (1, 2)})

    def fake(answers: dict[int, Any]) -> Any:
        async def fetch(ip: str, port: int, token: str | None) -> Any:
            answer = answers[port]
            if isinstance(answer, Exception):
                raise answer
            return answer
        return fetch

    two = fake({HTTP_PORT: {"tenants": tenants}, DELIVERY_HTTP_PORT: {"addresses": figures}})
    assert asyncio.run(read_pod(two, "10.0.0.1", None)) == (tenants, figures)
    one = fake({HTTP_PORT: {"tenants": tenants, "addresses": figures}, DELIVERY_HTTP_PORT: OSError("closed")})
    assert asyncio.run(read_pod(one, "10.0.0.1", None)) == (tenants, figures)
    silent = fake({HTTP_PORT: {"tenants": tenants}, DELIVERY_HTTP_PORT: OSError("refused")})
    assert asyncio.run(read_pod(silent, "10.0.0.1", None)) == (tenants, None)  # not read: no verdicts
    down = fake({HTTP_PORT: OSError("refused"), DELIVERY_HTTP_PORT: {"addresses": figures}})
    assert asyncio.run(read_pod(down, "10.0.0.1", None)) == (None, None)
