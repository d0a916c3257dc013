"""Tenant → its namespace and SMTP credentials Secret (pure; the password is an input)."""

from __future__ import annotations

from typing import Any

from smtpinfra_api.meta import API_VERSION
from smtpinfra_api.v1alpha1 import TenantSpec

CREDENTIALS_SECRET = "smtp-credentials"
TENANT_LABEL = "smtpinfra.com/tenant"


def namespace_name(name: str, spec: TenantSpec) -> str:
    """The tenant's namespace: spec.namespace, or tenant-<name>."""
    return spec.namespace or f"tenant-{name}"


def username(name: str) -> str:
    """The SMTP AUTH username of a tenant: its name, which is unique cluster-wide."""
    return name


def _owner(name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Tenant", "name": name, "uid": uid, "controller": True,
            "blockOwnerDeletion": True}


def namespace(name: str, uid: str, spec: TenantSpec) -> dict[str, Any]:
    """The tenant namespace, owned by the Tenant so it goes away with it."""
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace_name(name, spec),
                         "labels": {TENANT_LABEL: name, "app.kubernetes.io/managed-by": "smtp-infra-operator"},
                         "ownerReferences": [_owner(name, uid)]}}


def credentials_secret(name: str, uid: str, spec: TenantSpec, password: str, password_hash: str,
                       submission_host: str | None = None) -> dict[str, Any]:
    """The tenant's SMTP login. The hash sits beside the password so every server renders the same one."""
    data = {"username": username(name), "password": password, "passwordHash": password_hash}
    if submission_host:
        data["host"] = submission_host
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": CREDENTIALS_SECRET, "namespace": namespace_name(name, spec),
                         "labels": {TENANT_LABEL: name, "app.kubernetes.io/managed-by": "smtp-infra-operator"},
                         "ownerReferences": [_owner(name, uid)]},
            "stringData": data}
