"""`smtp-infra report`: the pure model and rendering, on objects the operator really wrote
(the Argo CD testdata) and /stats as the MTA serves it; the stats reader on a real HTTP server."""

from __future__ import annotations

import http.server
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from rich.console import Console

from smtpinfra_cli.report.gather import read_stats
from smtpinfra_cli.report.model import StatsResult, build
from smtpinfra_cli.report.render import render, to_json
from tests.observability.argo import CUSTOMIZATIONS

pytestmark = pytest.mark.observability


def captured(kind: str, name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((CUSTOMIZATIONS / kind / "testdata" / f"{name}.yaml").read_text()))


def pod(name: str, server: str = "outbound", *, ready: bool = True, ip: str | None = "127.0.0.1",
        port: int = 8080, phase: str = "Running", namespace: str = "default") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": "smtp-infra-mta", "app.kubernetes.io/instance": server}},
            "spec": {"containers": [{"name": "mta", "ports": [{"name": "smtp", "containerPort": 25},
                                                              {"name": "http", "containerPort": port}]}]},
            "status": {"phase": phase, "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


STATS = {"hostname": "smtp.mail.example.com", "ready": True, "sessions": 3,
         "queue": {"messages": 42, "oldest_age_seconds": 75.5}, "tenants": {}}


def report_of(**overrides: Any) -> Any:
    tenant = captured("Tenant", "healthy")
    tenant["status"]["usage"] = {"sentThisHour": 1500, "sentToday": 12000, "bounceRate": "9.5",
                                 "complaintRate": "0.05"}
    campaign = captured("Campaign", "healthy")
    objects = {"SmtpServer": [captured("SmtpServer", "healthy"), captured("SmtpServer", "progressing")],
               "IpPool": [captured("IpPool", "healthy")],
               "Tenant": [tenant], "Campaign": [campaign, captured("Campaign", "suspended")]}
    objects.update(overrides)
    pods = [pod("live-0", "live", namespace="observe-live"), pod("outbound-0", ready=False)]
    stats = {("observe-live", "live-0"): StatsResult(stats=STATS),
             ("default", "outbound-0"): StatsResult(error="unreachable (TimeoutError)")}
    return build("2026-12-01T01:00:00Z", objects, pods, stats, ["no /stats from 1 pod(s): default/outbound-0"])


def text(report: Any) -> str:
    console = Console(record=True, width=220, color_system=None, file=io.StringIO())
    console.print(render(report))
    return console.export_text()


def test_servers_show_their_pods_and_what_stats_said() -> None:
    report = report_of()
    assert [(s.namespace, s.name) for s in report.servers] == [("default", "outbound"), ("observe-live", "live")]
    waiting, live = report.servers
    assert (live.replicas, live.ready_replicas, [p.name for p in live.pods]) == (1, 1, ["live-0"])
    assert (live.pods[0].queue, live.pods[0].sessions, live.pods[0].oldest_age_seconds) == (42, 3, 75.5)
    assert (waiting.replicas, [p.name for p in waiting.pods]) == (2, ["outbound-0"])
    assert waiting.pods[0].queue is None and waiting.pods[0].stats_error == "unreachable (TimeoutError)"
    out = text(report)
    assert "observe-live/live" in out and "True Available" in out and "1/1" in out
    assert "default/outbound" in out and "False PodsNotReady" in out
    assert "live-0" in out and "42" in out and "76s" in out
    assert "unreachable (TimeoutError)" in out
    assert "note: no /stats from 1 pod(s)" in out


def test_pools_show_each_address() -> None:
    report = report_of()
    pool = report.pools[0]
    assert [a.address for a in pool.addresses] == ["127.0.10.1", "127.0.10.2"]
    assert {a.assigned_to for a in pool.addresses} == {"default/outbound/0", "default/outbound/1"}
    out = text(report)
    assert "transactional" in out and "127.0.10.1" in out and "default/outbound/0" in out


def test_quarantined_and_listed_addresses_stand_out() -> None:
    pool = captured("IpPool", "healthy")
    pool["status"]["addresses"][0].update(quarantined=True, listings=["zen.spamhaus.org"], warmupDay=3,
                                          dailyCap=2000)
    report = report_of(IpPool=[pool])
    address = report.pools[0].addresses[0]
    assert (address.quarantined, address.listings, address.warmup_day, address.daily_cap) == (
        True, ("zen.spamhaus.org",), 3, 2000)
    out = text(report)
    assert "zen.spamhaus.org" in out and "yes" in out and "2,000" in out


def test_tenants_against_quotas_and_thresholds() -> None:
    report = report_of()
    tenant = report.tenants[0]
    assert (tenant.sent_this_hour, tenant.quota_per_hour, tenant.sent_today, tenant.quota_per_day) == (
        1500, 20000, 12000, 200000)
    assert (tenant.bounce_rate, tenant.max_bounce_rate) == ("9.5", "8")
    out = text(report)
    assert "1,500 / 20,000" in out and "12,000 / 200,000" in out
    assert "9.5% (max 8%)" in out and "0.05% (max 0.3%)" in out


def test_campaigns_with_progress_and_suspension() -> None:
    report = report_of()
    done, suspended = report.campaigns
    assert done.recipients == 2 and done.done == 2 and done.phase == "Completed"
    assert suspended.suspended and suspended.done == 0
    out = text(report)
    assert "████████████████████ 2/2 (100%)" in out
    assert "░░░░░░░░░░░░░░░░░░░░ 0/2 (0%)" in out and "Suspended (spec)" in out


def test_json_is_plain_data_with_everything() -> None:
    data = json.loads(json.dumps(to_json(report_of())))
    assert data["servers"][1]["pods"][0]["queue"] == 42
    assert data["pools"][0]["addresses"][1]["address"] == "127.0.10.2"
    assert data["tenants"][0]["quota_per_day"] == 200000
    assert [c["done"] for c in data["campaigns"]] == [2, 0]
    assert data["warnings"] == ["no /stats from 1 pod(s): default/outbound-0"]


def test_an_empty_cluster_renders() -> None:
    report = build("2026-12-01T01:00:00Z", {}, [], {})
    assert "SMTP servers" in text(report) and to_json(report)["servers"] == []


class _Stats(http.server.BaseHTTPRequestHandler):
    token: str | None = None

    def do_GET(self) -> None:
        if self.token is not None and self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps(STATS).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stats_server() -> Iterator[tuple[http.server.HTTPServer, type[_Stats]]]:
    handler = type("Handler", (_Stats,), {"token": "s3cret"})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()


def test_stats_reader_sends_the_token_and_degrades_without_it(stats_server: Any) -> None:
    from smtpinfra_cli.report.gather import fetch_stats

    server, _ = stats_server
    target = pod("outbound-0", port=server.server_address[1])
    assert read_stats(target, "s3cret", fetch_stats).stats == STATS
    assert read_stats(target, None, fetch_stats) == StatsResult(error="stats refused (no token)")
    assert read_stats(target, "wrong", fetch_stats) == StatsResult(error="stats token refused")
    assert read_stats(pod("outbound-1", phase="Pending", ip=None), None, fetch_stats).error == "not running"
    closed = pod("outbound-2", port=1)
    assert (read_stats(closed, None, fetch_stats).error or "").startswith("unreachable")
