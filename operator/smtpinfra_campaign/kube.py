"""The API objects the sender reads and the Lease it holds, behind a small interface.

`KubeApi` is the kubernetes client (in-cluster service account, or a kubeconfig); the sender
only sees `CampaignApi`, so the sending loop is independent of how the objects are fetched.
Leases are plain dicts in their JSON form (`metadata`, `spec`) to keep the decisions in
`lease.py` pure.
"""

from __future__ import annotations

import base64
from typing import Any, Protocol, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

GROUP, VERSION = "smtpinfra.com", "v1alpha1"


class Conflict(Exception):
    """The Lease changed since it was read (someone else wrote it)."""


class CampaignApi(Protocol):
    def get_campaign(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def get_tenant(self, name: str) -> dict[str, Any] | None: ...
    def read_key(self, kind: str, namespace: str, name: str, key: str) -> str: ...
    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def create_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]: ...
    def replace_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]: ...


class KubeApi:
    """CampaignApi over the kubernetes client."""

    def __init__(self, kubeconfig: str | None = None) -> None:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        else:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
        self.api = client.ApiClient()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)

    def get_campaign(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                                 "campaigns", name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get_tenant(self, name: str) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], self.custom.get_cluster_custom_object(GROUP, VERSION, "tenants", name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def read_key(self, kind: str, namespace: str, name: str, key: str) -> str:
        """The text under `key` of a ConfigMap or Secret; KeyError names what is missing."""
        try:
            if kind == "Secret":
                secret = self.core.read_namespaced_secret(name, namespace)
                data = (secret.data or {}).get(key)
                if data is None:
                    raise KeyError(f"Secret {namespace}/{name} has no key {key!r}")
                return base64.b64decode(data).decode("utf-8")
            cm = self.core.read_namespaced_config_map(name, namespace)
            text = (cm.data or {}).get(key)
            if text is None:
                raise KeyError(f"ConfigMap {namespace}/{name} has no key {key!r}")
            return str(text)
        except ApiException as exc:
            if exc.status == 404:
                raise KeyError(f"{kind} {namespace}/{name} not found") from None
            raise

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            lease = self.coordination.read_namespaced_lease(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._plain(lease)

    def create_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]:
        try:
            created = self.coordination.create_namespaced_lease(namespace, lease)  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(str(exc.reason)) from None
            raise
        return self._plain(created)

    def replace_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]:
        try:
            replaced = self.coordination.replace_namespaced_lease(lease["metadata"]["name"], namespace,
                                                                  lease)  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status in (409, 404):
                raise Conflict(str(exc.reason)) from None
            raise
        return self._plain(replaced)

    def _plain(self, obj: object) -> dict[str, Any]:
        """A client model as its JSON dict (camelCase keys), as the API server writes it."""
        return cast(dict[str, Any], self.api.sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]
