"""The API objects the sender reads and the Lease it holds, behind a small interface.

`KubeApi` is the project's REST client (`smtpinfra_kube`: in-cluster service account, or a
kubeconfig); the sender only sees `CampaignApi`, so the sending loop is independent of how the
objects are fetched. Leases are plain dicts in their JSON form (`metadata`, `spec`) to keep the
decisions in `lease.py` pure.
"""

from __future__ import annotations

import base64
from typing import Any, Protocol, cast

from smtpinfra_kube import ApiException, KubeConfig
from smtpinfra_kube.rest import RestClient

GROUP, VERSION = "smtpinfra.com", "v1alpha1"
USER_AGENT = "smtp-infra-campaign-sender"


class Conflict(Exception):
    """The Lease changed since it was read (someone else wrote it)."""


class CampaignApi(Protocol):
    def get_campaign(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def get_tenant(self, name: str) -> dict[str, Any] | None: ...
    def read_key(self, kind: str, namespace: str, name: str, key: str) -> str: ...
    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def create_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]: ...
    def replace_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]: ...


def _leases(namespace: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


class KubeApi:
    """CampaignApi over the REST client (blocking calls: the sender makes a few per second at most)."""

    def __init__(self, kubeconfig: str | None = None, client: RestClient | None = None) -> None:
        self.client = client if client is not None else RestClient(KubeConfig.load(kubeconfig),
                                                                   user_agent=USER_AGENT)

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], self.client.request("GET", path))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get_campaign(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/campaigns/{name}")

    def get_tenant(self, name: str) -> dict[str, Any] | None:
        return self._get(f"/apis/{GROUP}/{VERSION}/tenants/{name}")

    def read_key(self, kind: str, namespace: str, name: str, key: str) -> str:
        """The text under `key` of a ConfigMap or Secret; KeyError names what is missing."""
        plural = "secrets" if kind == "Secret" else "configmaps"
        found = self._get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        if found is None:
            raise KeyError(f"{kind} {namespace}/{name} not found")
        value = (found.get("data") or {}).get(key)
        if value is None:
            raise KeyError(f"{kind} {namespace}/{name} has no key {key!r}")
        return base64.b64decode(value).decode("utf-8") if kind == "Secret" else str(value)

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(f"{_leases(namespace)}/{name}")

    def create_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", **lease}
        try:
            return cast(dict[str, Any], self.client.request("POST", _leases(namespace), body=body))
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(str(exc.reason)) from None
            raise

    def replace_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", **lease}
        try:
            return cast(dict[str, Any], self.client.request("PUT", f"{_leases(namespace)}/{lease['metadata']['name']}",
                                                            body=body))
        except ApiException as exc:
            if exc.status in (409, 404):
                raise Conflict(str(exc.reason)) from None
            raise
