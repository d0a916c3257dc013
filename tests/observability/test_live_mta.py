"""With the pod runner the MTA pods really run: the SmtpServer becomes Ready (Argo CD: Healthy, on
the live object) and `smtp-infra report` reads each pod's /stats."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.kube import apply, condition, get, wait_for
from tests.observability.argo import health
from tests.observability.test_argocd_live import capture
from tests.observability.test_report_live import report

pytestmark = [pytest.mark.operator, pytest.mark.observability]

NS = "observe-live"


def test_running_server_is_healthy_and_reports_its_pods(operator: Any, pod_runner: Any, tls_files: Any,
                                                         tmp_path: Any) -> None:
    cp = operator.cp
    cp.kubectl("create", "namespace", NS, check=False)
    cert, key = tls_files
    cp.kubectl("-n", NS, "create", "secret", "tls", "live-tls", f"--cert={cert}", f"--key={key}", check=False)
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": "observe-live"},
               "spec": {"addresses": ["127.0.21.1"], "ptrTemplate": "mta-{index}.live.example.test"}})
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "SmtpServer",
               "metadata": {"name": "live", "namespace": NS},
               "spec": {"hostname": "smtp.live.example.test", "replicas": 1, "ipPools": ["observe-live"],
                        "returnPathDomain": "bounces.live.example.test", "tls": {"secretName": "live-tls"}}})
    try:
        server = wait_for(lambda: (o := get(cp, "smtpserver", "live", NS)) and condition(o, "Ready")
                          and condition(o, "Ready")["status"] == "True" and o, timeout=240, interval=1,
                          what="SmtpServer Ready with its pod running")
        assert health("SmtpServer", server, tmp_path) == ("Healthy", condition(server, "Ready")["message"])
        capture("SmtpServer", "healthy", server)

        def stats_read() -> dict[str, Any] | None:
            result = report(cp, "-o", "json")
            assert result.returncode == 0, result.stderr
            mine = next(s for s in json.loads(result.stdout)["servers"] if s["name"] == "live")
            pods = mine["pods"]
            return mine if pods and all(p["queue"] is not None for p in pods) else None

        mine = wait_for(stats_read, timeout=60, interval=1, what="the report reads /stats of the live pod")
        pod = mine["pods"][0]
        assert (pod["name"], pod["phase"], pod["ready"], pod["queue"], pod["stats_error"]) == (
            "live-0", "Running", True, 0, None)
        assert mine["ready_replicas"] == 1
    finally:
        cp.kubectl("-n", NS, "delete", "smtpserver", "live", "--wait=false", check=False)
