"""The operator process against the local control plane serves its metrics on the default port
(9090, free of Kopf's liveness and the MTAs' 8080), with the warm-up gauges of a pool it reconciled."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.kube import OperatorProcess, apply, wait_for
from tests.observability.promql import families

pytestmark = pytest.mark.observability

PLAN = {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "WarmupPlan", "metadata": {"name": "metrics-plan"},
        "spec": {"stages": [{"day": 1, "dailyCap": 50}, {"day": 2, "dailyCap": 100}]}}
POOL = {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": "metrics-pool"},
        "spec": {"addresses": ["127.0.10.201", "127.0.10.202"], "warmupPlan": "metrics-plan"}}


def scrape() -> str | None:
    try:
        with urllib.request.urlopen("http://127.0.0.1:9090/metrics", timeout=5) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None


def test_the_running_operator_serves_its_families_on_9090(crds: Any, tmp_path: Path) -> None:
    proc = OperatorProcess(crds, tmp_path / "operator.log")
    proc.env.pop("SMTP_INFRA_METRICS_PORT")  # the default port, as the CLI defines it
    proc.start()
    try:
        apply(crds, PLAN)
        apply(crds, POOL)

        def pool_gauges() -> str | None:
            text = scrape()
            wanted = 'smtpinfra_operator_address_state{address="127.0.10.201",pool="metrics-pool",state="Warming"} 1.0'
            return text if text is not None and wanted in text else None

        text = wait_for(pool_gauges, timeout=120, interval=0.5,
                        what="the pool's address state on http://127.0.0.1:9090/metrics")
        exposed = families(text)
        for name in ("smtpinfra_operator_reconcile_total", "smtpinfra_operator_active",
                     "smtpinfra_operator_warmup_day", "smtpinfra_operator_dnsbl_listed",
                     "smtpinfra_operator_campaign_recipients", "smtpinfra_operator_tenant_suspended"):
            assert name in exposed, name
        assert 'smtpinfra_operator_active{peering=""} 1.0' in text
    finally:
        crds.kubectl("delete", "ippool", "metrics-pool", "--ignore-not-found", check=False)
        crds.kubectl("delete", "warmupplan", "metrics-plan", "--ignore-not-found", check=False)
        proc.stop()
