"""The chart's PrometheusRule: valid for Prometheus (promtool check rules), every alert unit-tested
firing and not firing (promtool test rules), and every series it reads one that really exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.operator_metrics import operator_families
from tests.observability.promql import EXTERNAL_SERIES, families, ksm_series, metric_names
from tests.observability.tools import helm_template, promtool

pytestmark = pytest.mark.observability

UNIT_TESTS = Path(__file__).parent / "rules" / "alerts_test.yaml"
WITH_CRD = ("--api-versions", "monitoring.coreos.com/v1/PrometheusRule")


def rendered_rule(*args: str) -> dict[str, Any] | None:
    found = [doc for doc in helm_template(*args) if doc["kind"] == "PrometheusRule"]
    assert len(found) <= 1
    return found[0] if found else None


@pytest.fixture(scope="module")
def rule() -> dict[str, Any]:
    obj = rendered_rule(*WITH_CRD)
    assert obj is not None
    return obj


@pytest.fixture
def rules_dir(rule: dict[str, Any], tmp_path: Path) -> Path:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    return tmp_path


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool()), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)


def alerts(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r}


def test_rendered_only_when_the_prometheusrule_api_exists() -> None:
    assert rendered_rule() is None
    assert rendered_rule(*WITH_CRD, "--set", "monitoring.prometheusRule.enabled=false") is None
    extra = rendered_rule(*WITH_CRD, "--set", "monitoring.prometheusRule.labels.release=kube-prometheus-stack")
    assert extra is not None and extra["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_promtool_check_rules(rules_dir: Path) -> None:
    result = run_promtool("check", "rules", "--lint=all", "--lint-fatal", "rules.yaml", cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_unit_tests_pass(rules_dir: Path) -> None:
    result = run_promtool("test", "rules", UNIT_TESTS.name, cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent(rule: dict[str, Any]) -> None:
    cases = [case for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    for name in alerts(rule):
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name} never tested firing"
        assert any(not case["exp_alerts"] for case in mine), f"{name} never tested silent"


def test_thresholds_come_from_values() -> None:
    obj = rendered_rule(*WITH_CRD, "--set", "monitoring.prometheusRule.thresholds.queueDepth=123",
                        "--set", "monitoring.prometheusRule.thresholds.tenantWindow=6h")
    assert obj is not None
    assert alerts(obj)["SmtpQueueDeep"]["expr"] == "smtpinfra_mta_queue_messages > 123"
    operator = rendered_rule(*WITH_CRD, "--set", "monitoring.prometheusRule.thresholds.reconcileErrorsPerMinute=2",
                             "--set", "monitoring.prometheusRule.thresholds.warmupHeldFor=3d")
    assert operator is not None
    assert alerts(operator)["SmtpOperatorReconcileErrors"]["expr"].endswith("* 60 > 2")
    assert alerts(operator)["SmtpWarmupHeld"]["for"] == "3d"
    # Without the operator's metrics endpoint, no alert reads its series (none would ever resolve).
    unscraped = rendered_rule(*WITH_CRD, "--set", "metricsPort=0")
    assert unscraped is not None and "SmtpOperatorDown" in alerts(unscraped)
    assert not {"SmtpOperatorNotActive", "SmtpOperatorReconcileErrors", "SmtpWarmupHeld"} & set(alerts(unscraped))
    recorded = {r["record"]: r["expr"] for g in obj["spec"]["groups"] for r in g["rules"] if "record" in r}
    assert "[6h]" in recorded["tenant:smtpinfra_mta_delivered:increase_window"]


def test_every_series_is_really_exposed(rule: dict[str, Any], tmp_path: Path, tls_files: Any,
                                        password_hashes: dict[str, str], mta_factory: Any) -> None:
    """Each name an expression reads is recorded by the rules, served by a real MTA's /metrics or
    declared by the operator's runtime, in the kube-state-metrics configuration the chart ships,
    or a named external series."""
    from tests.mta.conftest import base_config
    from tests.observability.test_dashboard import scrape

    mta = mta_factory(base_config(tmp_path, tls_files, password_hashes))
    operator = operator_families()
    exposed = families(scrape(mta)) | operator
    recorded = {r["record"] for g in rule["spec"]["groups"] for r in g["rules"] if "record" in r}
    known = exposed | ksm_series() | recorded | set(EXTERNAL_SERIES)
    used = {name for g in rule["spec"]["groups"] for r in g["rules"] for name in metric_names(r["expr"])}
    assert used - known == set()
    assert {n for n in used if n.startswith("smtpinfra_mta_")} <= exposed
    assert {n for n in used if n.startswith("smtpinfra_operator_")} <= operator
    assert {n for n in used if n.startswith("smtpinfra_operator_")}, "no alert reads the operator's own series"
