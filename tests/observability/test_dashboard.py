"""The Grafana dashboard in the chart: a valid dashboard model, shipped for the sidecar, and every
query reading series that really exist (scraped from a running MTA, declared by the operator's
runtime, or in the kube-state-metrics configuration the chart ships for the operator's resources)."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.observability.operator_metrics import operator_families
from tests.observability.promql import CHART, EXTERNAL_SERIES, families, ksm_series, metric_names
from tests.observability.tools import helm_template

pytestmark = pytest.mark.observability

DASHBOARD = CHART / "dashboards" / "smtp-infra.json"


def scrape(mta: Any) -> str:
    """The exposition a running MTA serves on /metrics."""
    from tests.mta.conftest import MTA_ADDR

    with urllib.request.urlopen(f"http://{MTA_ADDR}:{mta.app.http_port}/metrics", timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode())


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dash["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def expressions(dash: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets, and the metric of each label_values() variable."""
    exprs = [t["expr"] for p in panels(dash) for t in p.get("targets", [])]
    for variable in dash["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"]["query"])
            assert match, variable
            exprs.append(match.group(1))
    return exprs


def test_loads_as_a_dashboard_model() -> None:
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    dash = dashboard()
    model = Dashboard.from_json(dash)
    assert model.title == "smtp-infra" and model.uid
    assert model.schema_version is not None and model.schema_version >= 39
    assert model.panels is not None and len(model.panels) == len(dash["panels"])
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dash):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_covers_what_a_mail_team_looks_at() -> None:
    text = " ".join(expressions(dashboard()))
    for needle in ("by (tenant)", "by (pool)", "by (source_ip)", "by (provider)", "smtpinfra_mta_queue_messages",
                   "smtpinfra_mta_queue_oldest_age_seconds", "smtpinfra_mta_complained_total",
                   "smtpinfra_ippool_address_daily_cap", "smtpinfra_ippool_address_quarantined",
                   "smtpinfra_campaign_delivered", "kube_deployment_status_replicas_available",
                   'smtpinfra_operator_reconcile_total{result="error"}',
                   "smtpinfra_operator_reconcile_duration_seconds", "smtpinfra_operator_queue_depth",
                   "smtpinfra_operator_dnsbl_listed", "smtpinfra_operator_dnsbl_zone_usable",
                   "smtpinfra_operator_address_state", "smtpinfra_operator_warmup_day",
                   "smtpinfra_operator_warmup_daily_cap", "smtpinfra_operator_campaign_recipients",
                   "smtpinfra_operator_tenant_suspended"):
        assert needle in text, needle


def test_every_query_reads_series_that_exist(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str],
                                             mta_factory: Any) -> None:
    from tests.mta.conftest import base_config, submit

    mta = mta_factory(base_config(tmp_path, tls_files, password_hashes))
    assert submit(mta).has("250")  # the labelled families now carry samples too
    exposed = families(scrape(mta))
    assert "smtpinfra_mta_accepted_total" in exposed and "smtpinfra_mta_bounced_total" in exposed
    operator = operator_families()
    known = exposed | operator | ksm_series() | set(EXTERNAL_SERIES)
    assert {n for e in expressions(dashboard()) for n in metric_names(e) if n.startswith("smtpinfra_operator_")}
    unknown = {name: expr for expr in expressions(dashboard()) for name in metric_names(expr) if name not in known}
    assert unknown == {}


def test_shipped_as_a_configmap_for_the_grafana_sidecar() -> None:
    maps = [d for d in helm_template() if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert len(maps) == 1
    assert maps[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(maps[0]["data"]["smtp-infra.json"]) == dashboard()
    assert not [d for d in helm_template("--set", "monitoring.dashboard.enabled=false")
                if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
