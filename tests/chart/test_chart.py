"""The Helm chart: lint, render, install on the real API server, and run the operator with its RBAC."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.kube import (
    CHART,
    EXAMPLES,
    KUBE_VERSION,
    ROOT,
    OperatorProcess,
    apply,
    get,
    helm,
    operator_kubeconfig,
    wait_for,
)

pytestmark = pytest.mark.chart

def test_chart_lints_clean(control_plane):
    out = helm(control_plane, "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out.stdout


def test_more_replicas_without_peering_is_refused(control_plane):
    result = helm(control_plane, "template", "x", str(CHART), "--kube-version", KUBE_VERSION,
                  "--set", "replicaCount=2", check=False)
    assert result.returncode != 0
    assert "replicaCount > 1 needs peering.name" in result.stderr


def test_chart_crds_are_the_generated_ones():
    generated = sorted((ROOT / "crds").glob("*.yaml"))
    assert [p.name for p in generated] == [f"smtpinfra.com_{plural}.yaml" for plural in
                                           ("campaigns", "ippools", "smtpservers", "tenants", "warmupplans")]
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == [p.name for p in generated]
    for path in generated:
        assert (CHART / "crds" / path.name).read_text() == path.read_text()


def test_rbac_is_least_privilege(control_plane):
    rendered = helm(control_plane, "template", "x", str(CHART), "--kube-version", KUBE_VERSION).stdout
    role = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ClusterRole")
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert not verbs & {"*", "deletecollection", "escalate", "bind", "impersonate"}
    deletable = {r for rule in role["rules"] if "delete" in rule["verbs"] for r in rule["resources"]}
    # PDBs and DNSEndpoints only when made obsolete by the spec; Jobs: the ledger-erasure Jobs once done
    assert deletable == {"poddisruptionbudgets", "dnsendpoints", "jobs"}
    assert all("*" not in rule["resources"] for rule in role["rules"])
    assert "kopf.dev" not in {g for rule in role["rules"] for g in rule["apiGroups"]}
    peered = helm(control_plane, "template", "x", str(CHART), "--kube-version", KUBE_VERSION,
                  "--set", "replicaCount=2", "--set", "peering.name=smtp-infra").stdout
    role = next(d for d in yaml.safe_load_all(peered) if d and d["kind"] == "ClusterRole")
    assert "kopf.dev" in {g for rule in role["rules"] for g in rule["apiGroups"]}


def test_install_and_run_the_operator_with_the_charts_service_account(crds, tmp_path):
    """The operator works with exactly the chart's ClusterRole, not as cluster-admin."""
    cp = crds
    # A release of its own, so it never collides with the RBAC the operator fixtures apply.
    helm(cp, "upgrade", "--install", "chart-test", str(CHART), "--namespace", "chart-test",
         "--create-namespace", "--skip-crds", "--wait=false")
    deployment = get(cp, "deployment", "chart-test-smtp-infra-operator", "chart-test")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "chart-test-smtp-infra"
    kubeconfig = operator_kubeconfig(cp, tmp_path / "operator.kubeconfig")
    # The token can do what the operator needs and nothing else.
    can = subprocess.run([str(cp.kubectl_path), "--kubeconfig", str(kubeconfig), "auth", "can-i", "delete",
                          "secrets", "-A"], capture_output=True, text=True)
    assert can.stdout.strip() == "no"
    proc = OperatorProcess(cp, tmp_path / "operator.log")
    proc.start_with_kubeconfig(kubeconfig)
    try:
        doc = yaml.safe_load((EXAMPLES / "warmupplan-standard.yaml").read_text())
        doc["metadata"]["name"] = "rbac-check"
        apply(cp, doc)
        wait_for(lambda: (get(cp, "warmupplan", "rbac-check").get("status", {}).get("finalDailyCap") == 100000),
                 timeout=60, what="status written with the chart's RBAC")
        # A 403 status, not the milliseconds of a log timestamp ("02:12:56,403").
        assert "Forbidden" not in proc.log() and not re.search(r"[^,]\b403\b", proc.log()), proc.log()[-3000:]
    finally:
        proc.stop()
        cp.kubectl("delete", "warmupplan", "rbac-check", "--wait=false", check=False)
        helm(cp, "uninstall", "chart-test", "--namespace", "chart-test", check=False)
