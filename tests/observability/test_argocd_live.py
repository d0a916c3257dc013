"""The Argo CD health checks on objects the operator really wrote on the local control plane.

Each case drives an object into a state with the real operator, then runs the kind's health.lua
on the live object. With ``SMTP_INFRA_ARGO_CAPTURE=1`` the objects are also written to the
checks' ``testdata/`` (the source of the static cases in ``health_test.yaml``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube import EXAMPLES, apply, condition, get, wait_for
from tests.observability.argo import CUSTOMIZATIONS, health

pytestmark = [pytest.mark.operator, pytest.mark.observability]

_VOLATILE_METADATA = ("managedFields",)


def capture(kind: str, name: str, obj: dict[str, Any]) -> None:
    """Keep the object as testdata (without managedFields, which only add noise)."""
    if not os.environ.get("SMTP_INFRA_ARGO_CAPTURE"):
        return
    obj = {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k not in _VOLATILE_METADATA}}
    path = CUSTOMIZATIONS / kind / "testdata" / f"{name}.yaml"
    header = "# Written by the operator on the local control plane (tests/observability/, SMTP_INFRA_ARGO_CAPTURE=1).\n"
    path.write_text(header + yaml.safe_dump(obj, sort_keys=False))


def ready_is(status: str, reason: str | None = None) -> Any:
    def check(obj: dict[str, Any]) -> bool:
        ready = condition(obj, "Ready")
        return bool(ready and ready["status"] == status and (reason is None or ready["reason"] == reason)
                    and obj["status"].get("observedGeneration") == obj["metadata"]["generation"])
    return check


def settle(cp: Any, resource: str, name: str, namespace: str | None, check: Any, what: str) -> dict[str, Any]:
    return wait_for(lambda: (o := get(cp, resource, name, namespace)) and check(o) and o,
                    timeout=90, interval=0.5, what=what)


def verdict(kind: str, obj: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    return health(kind, obj, tmp_path)


def test_warmupplan_healthy_and_degraded(operator, tmp_path):
    cp = operator.cp
    apply(cp, (EXAMPLES / "warmupplan-standard.yaml").read_text())
    obj = settle(cp, "warmupplan", "standard", None, ready_is("True"), "WarmupPlan Ready")
    assert verdict("WarmupPlan", obj, tmp_path) == ("Healthy", condition(obj, "Ready")["message"] or "PlanValid")
    capture("WarmupPlan", "healthy", obj)
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "WarmupPlan", "metadata": {"name": "shrinking"},
               "spec": {"stages": [{"day": 1, "dailyCap": 500}, {"day": 3, "dailyCap": 200}]}})
    obj = settle(cp, "warmupplan", "shrinking", None, ready_is("False", "CapsNotIncreasing"), "CapsNotIncreasing")
    status, message = verdict("WarmupPlan", obj, tmp_path)
    assert status == "Degraded"
    assert "spec.stages[1].dailyCap (200)" in message
    capture("WarmupPlan", "degraded", obj)


def test_tenant_healthy(operator, tmp_path):
    cp = operator.cp
    apply(cp, (EXAMPLES / "tenant.yaml").read_text())
    obj = settle(cp, "tenant", "acme", None, ready_is("True"), "Tenant Ready")
    assert verdict("Tenant", obj, tmp_path)[0] == "Healthy"
    capture("Tenant", "healthy", obj)


def test_ippool_and_smtpserver(operator, tmp_path, tls_files):
    cp = operator.cp
    for name in ("warmupplan-standard.yaml", "ippool.yaml", "tenant.yaml"):
        apply(cp, (EXAMPLES / name).read_text())
    cert, key = tls_files
    cp.kubectl("create", "secret", "tls", "smtp-mail-example-com-tls", f"--cert={cert}", f"--key={key}", check=False)
    apply(cp, (EXAMPLES / "smtpserver.yaml").read_text())
    # Without the pod runner the MTA pods stay Pending: the server is still converging.
    server = settle(cp, "smtpserver", "outbound", "default", ready_is("False", "PodsNotReady"), "PodsNotReady")
    assert verdict("SmtpServer", server, tmp_path)[0] == "Progressing"
    capture("SmtpServer", "progressing", server)
    pool = settle(cp, "ippool", "transactional", None,
                  lambda o: ready_is("True")(o) and o["status"].get("assigned") == 2, "IpPool Ready and assigned")
    assert verdict("IpPool", pool, tmp_path)[0] == "Healthy"
    capture("IpPool", "healthy", pool)

    cp.kubectl("delete", "secret", "smtp-mail-example-com-tls")
    server = settle(cp, "smtpserver", "outbound", "default", ready_is("False", "TlsSecretNotFound"),
                    "TlsSecretNotFound")
    status, message = verdict("SmtpServer", server, tmp_path)
    assert (status, message) == ("Degraded", condition(server, "Stalled")["message"])
    assert "smtp-mail-example-com-tls" in message
    capture("SmtpServer", "degraded", server)


def test_ippool_exhausted(operator, tmp_path, tls_files):
    cp = operator.cp
    cert, key = tls_files
    cp.kubectl("create", "secret", "tls", "crowded-tls", f"--cert={cert}", f"--key={key}", check=False)
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": "small"},
               "spec": {"addresses": ["127.0.11.1"], "ptrTemplate": "mta-{index}.small.example.com"}})
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "SmtpServer",
               "metadata": {"name": "crowded", "namespace": "default"},
               "spec": {"hostname": "crowded.example.com", "replicas": 2, "ipPools": ["small"],
                        "returnPathDomain": "bounces.crowded.example.com", "tls": {"secretName": "crowded-tls"}}})
    pool = settle(cp, "ippool", "small", None,
                  lambda o: ready_is("False")(o) and "xhausted" in condition(o, "Ready")["reason"], "PoolExhausted")
    assert condition(pool, "Stalled")["status"] == "True"
    assert verdict("IpPool", pool, tmp_path) == ("Degraded", condition(pool, "Stalled")["message"])
    capture("IpPool", "degraded", pool)


def test_campaign_progressing_and_suspended(operator, tmp_path):
    cp = operator.cp
    # Its tenant and server exist (whether the server is Ready does not matter), so it is on its way.
    apply(cp, (EXAMPLES / "tenant.yaml").read_text())
    apply(cp, (EXAMPLES / "smtpserver.yaml").read_text())
    apply(cp, (EXAMPLES / "campaign.yaml").read_text())
    obj = settle(cp, "campaign", "november-newsletter", "tenant-acme",
                 lambda o: (o.get("status") or {}).get("phase") in ("Pending", "Scheduled", "Sending"),
                 "Campaign on its way")
    assert verdict("Campaign", obj, tmp_path)[0] == "Progressing", obj.get("status")
    capture("Campaign", "progressing", obj)
    cp.kubectl("-n", "tenant-acme", "patch", "campaign", "november-newsletter", "--type=merge",
               "-p", '{"spec": {"suspend": true}}')
    try:
        obj = settle(cp, "campaign", "november-newsletter", "tenant-acme",
                     lambda o: o["spec"].get("suspend") and (o.get("status") or {}).get("phase") == "Paused",
                     "suspended generation observed")
        assert verdict("Campaign", obj, tmp_path)[0] == "Suspended"
        capture("Campaign", "suspended", obj)
    finally:  # the example campaign is shared by the session's later tests: leave it as the example has it
        cp.kubectl("-n", "tenant-acme", "patch", "campaign", "november-newsletter", "--type=merge",
                   "-p", '{"spec": {"suspend": null}}')
