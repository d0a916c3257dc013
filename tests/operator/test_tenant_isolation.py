"""Tenant isolation on the real control plane: namespaces, sender domains and credentials Secrets.

The operator runs with the chart's RBAC and knows its namespace from POD_NAMESPACE, as the chart
deploys it. The SmtpServer's one replica is a real MTA (the local pod runner): it must stay Ready
on the config rendered without a refused tenant; its rendered config and credentials are checked.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from smtpinfra_mta.passwords import hash_password
from tests.kube import OPERATOR_NAMESPACE, OperatorProcess, apply, condition, find, get, operator_kubeconfig, wait_for

pytestmark = pytest.mark.operator

NS = "isolation"
SERVER = "isolated"
TIER = {"tier": "isolation"}


@pytest.fixture(scope="module")
def cp(crds: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The control plane with an operator that knows its own namespace (POD_NAMESPACE)."""
    directory = tmp_path_factory.mktemp("operator-isolation")
    proc = OperatorProcess(crds, directory / "operator.log", env={"POD_NAMESPACE": OPERATOR_NAMESPACE},
                           kubeconfig=operator_kubeconfig(crds, directory / "kubeconfig"))
    proc.start()
    try:
        yield crds
    finally:
        proc.stop()
        print(proc.log()[-5000:])


def tenant(name: str, domains: list[str], namespace: str | None = None, labels: dict[str, str] | None = None
           ) -> dict[str, Any]:
    spec: dict[str, Any] = {"displayName": name, "senderDomains": domains}
    if namespace:
        spec["namespace"] = namespace
    return {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def ready_is(cp: Any, name: str, status: str) -> dict[str, Any]:
    """The Tenant when its Ready has that status; else fails naming its Ready (which `wait_for` reports)."""
    obj = find(cp, "tenant", name)
    ready = condition(obj, "Ready") if obj else None
    assert obj is not None and ready is not None and ready["status"] == status, ready
    return obj


def wait_ready(cp: Any, name: str, status: str) -> dict[str, Any]:
    obj: dict[str, Any] = wait_for(lambda: ready_is(cp, name, status), timeout=90, what=f"Tenant {name} Ready={status}")
    return obj


def namespace_labels(cp: Any, name: str) -> dict[str, str]:
    return dict(get(cp, "namespace", name)["metadata"].get("labels") or {})


def credentials_secret(cp: Any, namespace: str) -> dict[str, Any] | None:
    return find(cp, "secret", "smtp-credentials", namespace)


# ------------------------------------------------------------------------------------ namespaces


def test_kube_system_is_never_written_to(cp):
    """Refused by the API where the schema says so, else by the operator: either way nothing lands there."""
    result = apply(cp, tenant("grab-system", ["grab-system.example.test"], namespace="kube-system"), check=False)
    try:
        if result.returncode == 0:
            obj = wait_ready(cp, "grab-system", "False")
            ready = condition(obj, "Ready")
            assert ready["reason"] == "NamespaceNotAllowed"
            assert "kube-system" in ready["message"]
        else:
            assert "namespace" in result.stderr
        assert credentials_secret(cp, "kube-system") is None
        assert "smtpinfra.com/tenant" not in namespace_labels(cp, "kube-system")
    finally:
        cp.kubectl("delete", "tenant", "grab-system", "--ignore-not-found", "--wait=false")


def test_the_operators_namespace_is_refused(cp):
    apply(cp, tenant("grab-operator", ["grab-operator.example.test"], namespace=OPERATOR_NAMESPACE))
    try:
        obj = wait_ready(cp, "grab-operator", "False")
        ready = condition(obj, "Ready")
        assert ready["reason"] == "NamespaceNotAllowed"
        assert "operator's own namespace" in ready["message"]
        assert condition(obj, "Stalled")["status"] == "True"
        assert credentials_secret(cp, OPERATOR_NAMESPACE) is None
        assert "smtpinfra.com/tenant" not in namespace_labels(cp, OPERATOR_NAMESPACE)
    finally:
        cp.kubectl("delete", "tenant", "grab-operator", "--wait=false")


def test_another_tenants_namespace_is_refused_and_left_untouched(cp):
    apply(cp, tenant("iso-acme", ["iso-acme.example.test"]))
    wait_ready(cp, "iso-acme", "True")
    secret_before = get(cp, "secret", "smtp-credentials", "tenant-iso-acme")
    namespace_before = get(cp, "namespace", "tenant-iso-acme")
    apply(cp, tenant("iso-evil", ["iso-evil.example.test"], namespace="tenant-iso-acme"))
    try:
        obj = wait_ready(cp, "iso-evil", "False")
        ready = condition(obj, "Ready")
        assert ready["reason"] == "NamespaceOwnedByAnotherTenant"
        assert "Tenant iso-acme" in ready["message"]
        secret_after = get(cp, "secret", "smtp-credentials", "tenant-iso-acme")
        assert secret_after["metadata"]["resourceVersion"] == secret_before["metadata"]["resourceVersion"]
        assert secret_after["metadata"]["labels"]["smtpinfra.com/tenant"] == "iso-acme"
        namespace_after = get(cp, "namespace", "tenant-iso-acme")
        assert namespace_after["metadata"]["labels"] == namespace_before["metadata"]["labels"]
        assert namespace_after["metadata"]["labels"]["smtpinfra.com/tenant"] == "iso-acme"
        assert ready_is(cp, "iso-acme", "True")
    finally:
        cp.kubectl("delete", "tenant", "iso-evil", "--wait=false")


def test_a_namespace_that_existed_is_used_only_once_an_administrator_adopts_it(cp):
    cp.kubectl("create", "namespace", "payments")
    apply(cp, tenant("iso-payments", ["iso-payments.example.test"], namespace="payments"))
    try:
        obj = wait_ready(cp, "iso-payments", "False")
        ready = condition(obj, "Ready")
        assert ready["reason"] == "NamespaceNotOwned"
        assert "smtpinfra.com/tenant=iso-payments" in ready["message"]
        assert credentials_secret(cp, "payments") is None
        assert "smtpinfra.com/tenant" not in namespace_labels(cp, "payments")
        # The administrator adopts it: the tenant gets its credentials there, the namespace is not made the
        # Tenant's (deleting the Tenant must not delete a namespace it did not create).
        cp.kubectl("label", "namespace", "payments", "smtpinfra.com/tenant=iso-payments")
        wait_ready(cp, "iso-payments", "True")
        assert credentials_secret(cp, "payments") is not None
        assert not get(cp, "namespace", "payments")["metadata"].get("ownerReferences")
    finally:
        cp.kubectl("delete", "tenant", "iso-payments", "--wait=false")


# ------------------------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def server(cp: Any, pod_runner: Any, tls_files: tuple[str, str]) -> Iterator[Any]:
    """An SmtpServer serving the `tier: isolation` tenants, one kwok replica, and one well-behaved tenant."""
    cp.kubectl("create", "namespace", NS, check=False)
    cert, key = tls_files
    cp.kubectl("-n", NS, "create", "secret", "tls", "mta-tls", f"--cert={cert}", f"--key={key}", check=False)
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": "isolation-pool"},
               "spec": {"addresses": ["127.0.21.71"], "ptrTemplate": "mta-{index}.isolation.example.test"}})
    apply(cp, tenant("iso-good", ["good.example.test"], labels=TIER))
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "SmtpServer",
               "metadata": {"name": SERVER, "namespace": NS},
               "spec": {"hostname": "smtp.isolation.example.test", "replicas": 1, "ipPools": ["isolation-pool"],
                        "returnPathDomain": "bounces.isolation.example.test",
                        "tls": {"secretName": "mta-tls"}, "dns": {"provider": "none"},
                        "tenantSelector": {"matchLabels": TIER}}})
    wait_ready(cp, "iso-good", "True")
    wait_for(lambda: "iso-good" in served_tenants(cp) and server_lines(cp).get("iso-good"), timeout=120,
             what="iso-good served")
    wait_for(lambda: server_ready(cp), timeout=120, what="SmtpServer Ready")
    yield cp
    cp.kubectl("-n", NS, "delete", "smtpserver", SERVER, "--wait=false", check=False)


def server_obj(cp: Any) -> dict[str, Any]:
    return get(cp, "smtpserver", SERVER, NS)


def server_ready(cp: Any) -> bool:
    """True when the server is Ready; else fails naming its Ready condition (which `wait_for` reports)."""
    ready = condition(server_obj(cp), "Ready")
    assert ready is not None and ready["status"] == "True", ready
    return True


def server_lines(cp: Any) -> dict[str, str]:
    """The server's rendered credentials (tenant → `username:hash` line)."""
    secret = find(cp, "secret", f"{SERVER}-credentials", NS)
    return {k: base64.b64decode(v).decode() for k, v in ((secret or {}).get("data") or {}).items()}


def server_config(cp: Any) -> str:
    return str(get(cp, "configmap", f"{SERVER}-config", NS)["data"][f"{SERVER}-0.yaml"])


def served_tenants(cp: Any) -> dict[str, dict[str, Any]]:
    """The tenants of the replica's rendered MTA config, by name."""
    return {t["name"]: t for t in yaml.safe_load(server_config(cp))["tenants"]}


def test_overlapping_sender_domains_refuse_the_newer_tenant_on_both_tenants_and_the_server(server):
    cp = server
    apply(cp, tenant("iso-parent", ["co.uk"], labels=TIER))
    wait_ready(cp, "iso-parent", "True")
    wait_for(lambda: "iso-parent" in served_tenants(cp), timeout=90, what="iso-parent served")
    apply(cp, tenant("iso-sub", ["x.co.uk"], labels=TIER))
    try:
        newer = wait_ready(cp, "iso-sub", "False")
        ready = condition(newer, "Ready")
        assert ready["reason"] == "SenderDomainConflict"
        assert "x.co.uk is a subdomain of co.uk, which belongs to Tenant iso-parent" in ready["message"]
        assert condition(newer, "SenderDomainsExclusive")["status"] == "False"
        older = wait_for(lambda: (o := get(cp, "tenant", "iso-parent")) and
                         (c := condition(o, "SenderDomainsExclusive")) and c["status"] == "False" and o,
                         timeout=60, what="the older tenant notes the overlap")
        assert condition(older, "Ready")["status"] == "True"
        assert "iso-sub" in condition(older, "SenderDomainsExclusive")["message"]
        assert "iso-sub" in condition(older, "Ready")["message"]
        served = wait_for(lambda: (o := server_obj(cp)) and (c := condition(o, "TenantsServed")) and
                          c["status"] == "False" and c, timeout=90, what="TenantsServed=False")
        assert served["reason"] == "SenderDomainConflict"
        assert "Tenant iso-sub is not served" in served["message"] and "iso-parent" in served["message"]
        config = server_config(cp)
        assert "iso-sub" not in config and "x.co.uk" not in config and "iso-parent" in served_tenants(cp)
        assert "iso-sub" not in server_lines(cp)
        assert server_ready(cp)
    finally:
        cp.kubectl("delete", "tenant", "iso-sub", "--wait=false")
    wait_for(lambda: condition(get(cp, "tenant", "iso-parent"), "SenderDomainsExclusive")["status"] == "True",
             timeout=60, what="the older tenant clear again")
    cp.kubectl("delete", "tenant", "iso-parent", "--wait=false")


def tamper(cp: Any, namespace: str, **data: bytes) -> None:
    patch = {"data": {k: base64.b64encode(v).decode() for k, v in data.items()}}
    cp.kubectl("-n", namespace, "patch", "secret", "smtp-credentials", "--type=merge", "-p", json.dumps(patch))


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("username", b"{name}\nmallory", "username may contain only"),
    ("passwordHash", b"$scrypt$ln=14,r=999,p=999$c2FsdHNhbHQ$" + b"A" * 43, "r=999"),
    ("username", b"{name}\xff", "not UTF-8"),
], ids=["newline-in-username", "scrypt-r999", "non-utf8"])
def test_a_tampered_credentials_secret_fails_its_tenant_only(server, request, field, value, problem):
    cp = server
    name = f"iso-bad-{request.node.callspec.id}"
    apply(cp, tenant(name, [f"{name}.example.test"], labels=TIER))
    try:
        wait_ready(cp, name, "True")
        wait_for(lambda: name in served_tenants(cp), timeout=90, what=f"{name} served")
        good_line, good_config = server_lines(cp)["iso-good"], served_tenants(cp)["iso-good"]
        tamper(cp, f"tenant-{name}", **{field: value.replace(b"{name}", name.encode())})
        obj = wait_ready(cp, name, "False")
        ready = condition(obj, "Ready")
        assert ready["reason"] == "InvalidCredentials"
        assert problem in ready["message"] and "smtp-credentials" in ready["message"]
        assert "mallory" not in ready["message"]
        # The server leaves the tenant out and keeps serving the others, unchanged, and Ready.
        wait_for(lambda: name not in served_tenants(cp), timeout=90, what=f"{name} left out of the server's config")
        assert served_tenants(cp)["iso-good"] == good_config
        lines = server_lines(cp)
        assert lines["iso-good"] == good_line
        assert all(line.count("\n") == 1 and "mallory" not in line and "r=999" not in line
                   for line in lines.values())
        assert ready_is(cp, "iso-good", "True")
        wait_for(lambda: server_ready(cp), timeout=90, what="SmtpServer still Ready")
        # A valid hash of the operator's making again: served again.
        tamper(cp, f"tenant-{name}", username=name.encode(),
               passwordHash=hash_password("z" * 32, "hmac-sha256").encode())
        wait_ready(cp, name, "True")
        wait_for(lambda: name in served_tenants(cp), timeout=90, what=f"{name} served again")
    finally:
        cp.kubectl("delete", "tenant", name, "--wait=false")
