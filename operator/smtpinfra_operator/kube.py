"""The operator's Kubernetes I/O: get, list, server-side apply, create-once.

Synchronous kubernetes-client calls run in threads so Kopf's event loop stays free. Server-side
apply with one field manager makes every reconcile idempotent and restores objects that were
edited or deleted by hand, without clobbering fields other managers own.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

FIELD_MANAGER = "smtp-infra-operator"

__all__ = [
    "ApiException", "apply", "create_if_absent", "delete", "get", "invalidate", "kind_exists", "list_cached",
    "list_objects",
]


@functools.cache
def api_client() -> client.ApiClient:
    """A client configured from the in-cluster ServiceAccount or KUBECONFIG."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


@functools.cache
def dynamic() -> DynamicClient:
    """Discovery-backed client for any kind, ours and built-in."""
    return DynamicClient(api_client())  # type: ignore[no-untyped-call]


def _resource(api_version: str, kind: str) -> Any:
    return dynamic().resources.get(api_version=api_version, kind=kind)


def _plain(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


async def get(api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""

    def call() -> dict[str, Any] | None:
        try:
            return _plain(_resource(api_version, kind).get(name=name, namespace=namespace))
        except NotFoundError:
            return None

    return await asyncio.to_thread(call)


async def list_objects(api_version: str, kind: str, namespace: str | None = None,
                       label_selector: str | None = None) -> list[dict[str, Any]]:
    """Every object of a kind (in one namespace or cluster-wide)."""

    def call() -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"namespace": namespace}
        if label_selector:
            kwargs["label_selector"] = label_selector
        return [dict(i) for i in _plain(_resource(api_version, kind).get(**kwargs)).get("items", [])]

    return await asyncio.to_thread(call)


_list_cache: dict[tuple[str, str, str | None, str | None], tuple[float, list[dict[str, Any]]]] = {}
LIST_CACHE_SECONDS = 1.0


async def list_cached(api_version: str, kind: str, namespace: str | None = None,
                      label_selector: str | None = None) -> list[dict[str, Any]]:
    """`list_objects`, shared for a second by every reconcile in a burst.

    After a Tenant change every SmtpServer re-renders; without this, N servers would list M
    tenants N times within the same moment. Our own writes invalidate it, and the periodic
    resync corrects anything a stale read missed.
    """
    key = (api_version, kind, namespace, label_selector)
    now = time.monotonic()
    hit = _list_cache.get(key)
    if hit is not None and now - hit[0] < LIST_CACHE_SECONDS:
        return hit[1]
    items = await list_objects(api_version, kind, namespace, label_selector)
    _list_cache[key] = (now, items)
    return items


def invalidate() -> None:
    """Forget cached lists (after a write that changes what they would return)."""
    _list_cache.clear()


async def apply(obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply `obj` as the operator's field manager (forcing our own fields back)."""

    invalidate()

    def call() -> dict[str, Any]:
        resource = _resource(obj["apiVersion"], obj["kind"])
        return _plain(resource.server_side_apply(body=obj, field_manager=FIELD_MANAGER, force_conflicts=True,
                                                 namespace=obj["metadata"].get("namespace")))

    return await asyncio.to_thread(call)


async def create_if_absent(obj: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Create `obj` unless it exists; never modifies an existing one. Returns (created, object)."""
    meta = obj["metadata"]
    existing = await get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
    if existing is not None:
        return False, existing
    invalidate()

    def call() -> dict[str, Any]:
        return _plain(_resource(obj["apiVersion"], obj["kind"]).create(body=obj, namespace=meta.get("namespace")))

    try:
        return True, await asyncio.to_thread(call)
    except ApiException as error:
        if error.status == 409:  # created concurrently: keep theirs
            found = await get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
            assert found is not None
            return False, found
        raise


async def delete(api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
    """Delete if present; returns whether something was deleted."""

    def call() -> bool:
        try:
            _resource(api_version, kind).delete(name=name, namespace=namespace)
        except NotFoundError:
            return False
        return True

    return await asyncio.to_thread(call)


async def kind_exists(api_version: str, kind: str) -> bool:
    """Whether the API serves a kind (e.g. ServiceMonitor, Certificate are optional CRDs)."""

    def call() -> bool:
        try:
            dynamic().resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            try:
                dynamic().resources.invalidate_cache()
                dynamic().resources.get(api_version=api_version, kind=kind)
            except ResourceNotFoundError:
                return False
        return True

    return await asyncio.to_thread(call)
