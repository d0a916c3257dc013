"""Writes status and Events: the only place handlers touch the API for status.

Writes go to the status subresource as JSON merge patches, and only when something changed,
so re-deriving an unchanged outcome on a timer costs a comparison, not a write (and a write
never re-triggers a handler: Kopf reacts to spec and metadata changes, not status).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from kubernetes import client

from smtpinfra_api.meta import GROUP, VERSION
from smtpinfra_api.v1alpha1 import Kind

from .conditions import READY, Outcome, build_status, get_condition, now_rfc3339, pending, status_patch
from .kube import api_client, request

log = logging.getLogger(__name__)


def custom_objects_api() -> client.CustomObjectsApi:
    """A client for our custom resources (shares the operator's configured ApiClient)."""
    return client.CustomObjectsApi(api_client())


async def _patch_status(kind: type[Kind], name: str, namespace: str | None, patch: dict[str, Any]) -> None:
    if kind.scope == "Cluster":
        path = f"/apis/{GROUP}/{VERSION}/{kind.plural}/{quote(name)}/status"
    else:
        assert namespace is not None
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{kind.plural}/{quote(name)}/status"
    await asyncio.to_thread(request, "PATCH", path, body={"status": patch},
                            content_type="application/merge-patch+json")


async def publish(kind: type[Kind], body: Mapping[str, Any], outcome: Outcome) -> bool:
    """Bring the object's status in line with the outcome; returns whether anything was written.

    On first sight (no Ready condition yet) the object is first marked Ready=Unknown, so a
    watcher sees that the operator has taken it up before the answer is known.
    """
    meta = body["metadata"]
    name, namespace = meta["name"], meta.get("namespace")
    generation = meta.get("generation")
    current: dict[str, Any] = dict(body.get("status") or {})
    before = get_condition(current, READY)
    now = now_rfc3339()
    if before is None and outcome.ready != "Unknown":
        first = build_status(current, pending(), generation, now)
        await _patch_status(kind, name, namespace, status_patch(current, first))
        current = {**current, **first}
    desired = build_status(current, outcome, generation, now)
    patch = status_patch(current, desired)
    if not patch:
        return False
    await _patch_status(kind, name, namespace, patch)
    after = get_condition(desired, READY)
    previous_status = before["status"] if before else None
    if after and after["status"] != previous_status:
        await asyncio.to_thread(_event, body, after)
    log.info("%s %s/%s: Ready=%s (%s)", kind.kind, namespace or "", name, outcome.ready, outcome.reason)
    return True


def _event(body: Mapping[str, Any], ready: dict[str, Any]) -> None:
    """An Event when Ready flips, the transition a human wants to see in `kubectl describe`."""
    kind = "Normal" if ready["status"] != "False" else "Warning"
    post_event(body, kind, ready["reason"], ready.get("message") or f"Ready is {ready['status']}")


def post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Post a core/v1 Event about an object (best effort: never fail a reconcile on it).

    Written directly rather than through kopf.event(), because reconciles also run outside
    Kopf's handler context (resync loop, kicks from related objects).
    """
    meta = body["metadata"]
    namespace = meta.get("namespace") or "default"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    involved = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "name": meta["name"],
                "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion")}
    event = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
        "involvedObject": {k: v for k, v in involved.items() if v is not None},
        "reason": reason, "message": message[:1024], "type": type_, "firstTimestamp": now, "lastTimestamp": now,
        "count": 1, "source": {"component": "smtp-infra-operator"},
        "reportingComponent": "smtp-infra-operator", "reportingInstance": "smtp-infra-operator",
    }
    try:
        request("POST", f"/api/v1/namespaces/{quote(namespace)}/events", body=event)
    except Exception:
        log.exception("could not post event %s for %s", reason, meta["name"])
