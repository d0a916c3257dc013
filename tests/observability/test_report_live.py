"""`smtp-infra report` against the local control plane with the operator running. Without the pod
runner kwok keeps the MTA pods from running, so /stats is unreachable and the report says so
rather than failing; with it (when another module of the session started it) the pods answer."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.kube import EXAMPLES, ROOT, apply, wait_for

pytestmark = [pytest.mark.operator, pytest.mark.observability]


def report(cp: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smtpinfra_cli", "report", "--kubeconfig", str(cp.kubeconfig), *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env={"COLUMNS": "200",
                                                                                     "PATH": "/usr/bin:/bin"},
                          check=False)


def test_report_summarises_the_cluster(operator: Any, tls_files: Any) -> None:
    cp = operator.cp
    cert, key = tls_files
    cp.kubectl("create", "secret", "tls", "smtp-mail-example-com-tls", f"--cert={cert}", f"--key={key}", check=False)
    for name in ("warmupplan-standard.yaml", "ippool.yaml", "tenant.yaml", "smtpserver.yaml", "campaign.yaml"):
        apply(cp, (EXAMPLES / name).read_text())
    cp.kubectl("wait", "--for=condition=Ready", "tenant/acme", "ippool/transactional", "--timeout=90s")

    def pods_listed() -> dict[str, Any] | None:
        result = report(cp, "-o", "json")
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        servers = [s for s in data["servers"] if s["name"] == "outbound"]
        # An earlier module may have left the server without its TLS Secret: its status says so
        # until this module's operator has seen the Secret again, so wait for the reason too.
        return data if servers and len(servers[0]["pods"]) == 2 and servers[0]["condition"]["observed"] \
            and servers[0]["condition"]["reason"] in ("PodsNotReady", "Available") else None

    data = wait_for(pods_listed, timeout=90, interval=1,
                    what="the report lists the server's two pods and a reconciled Ready reason")
    server = next(s for s in data["servers"] if s["name"] == "outbound")
    assert server["replicas"] == 2 and server["pools"] == ["transactional"]
    assert {p["name"] for p in server["pods"]} == {"outbound-0", "outbound-1"}
    for pod in server["pods"]:  # either /stats answered, or the report says why not
        assert (pod["queue"] is None) == bool(pod["stats_error"]), pod
    unread = [p for p in server["pods"] if p["stats_error"]]
    pool = next(p for p in data["pools"] if p["name"] == "transactional")
    assert [(a["address"], a["assigned_to"]) for a in pool["addresses"]] == [
        ("127.0.10.1", "default/outbound/0"), ("127.0.10.2", "default/outbound/1")]
    assert all(a["daily_cap"] for a in pool["addresses"])
    tenant = next(t for t in data["tenants"] if t["name"] == "acme")
    assert (tenant["condition"]["status"], tenant["quota_per_hour"], tenant["quota_per_day"]) == ("True", 20000, 200000)
    campaign = next(c for c in data["campaigns"] if c["name"] == "november-newsletter")
    assert (campaign["namespace"], campaign["tenant"], campaign["recipients"]) == ("tenant-acme", "acme", 2)

    table = report(cp)
    assert table.returncode == 0, table.stderr
    for needle in ("default/outbound", server["condition"]["reason"], "outbound-0", "127.0.10.1",
                   "default/outbound/0", "CredentialsReady", " / 20,000", " / 200,000",
                   "tenant-acme/november-newsletter"):
        assert needle in table.stdout, (needle, table.stdout)
    if unread:  # other tests' pods may be in the cluster too: the note names at least these
        note = next(line for line in table.stdout.splitlines() if line.startswith("note: no /stats from"))
        assert all(f"default/{p['name']}" in note for p in unread), note


def test_watch_refreshes_until_interrupted(operator: Any) -> None:
    cp = operator.cp
    apply(cp, (EXAMPLES / "tenant.yaml").read_text())
    proc = subprocess.Popen([sys.executable, "-m", "smtpinfra_cli", "report", "--kubeconfig", str(cp.kubeconfig),
                             "-o", "json", "--watch", "--interval", "1", "--no-stats"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        first, second = json.loads(proc.stdout.readline()), json.loads(proc.stdout.readline())
        assert "acme" in {t["name"] for t in first["tenants"]} and second["at"] >= first["at"]
        assert proc.poll() is None, "--watch keeps running"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
