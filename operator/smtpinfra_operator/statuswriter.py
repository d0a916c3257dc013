"""Writes status and Events: the only place handlers touch the API for status.

Writes go to the status subresource as JSON merge patches, and only when something changed,
so re-deriving an unchanged outcome on a timer costs a comparison, not a write (and a write
never re-triggers a handler: Kopf reacts to spec and metadata changes, not status).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf
from kubernetes import client

from smtpinfra_api.meta import GROUP, VERSION
from smtpinfra_api.v1alpha1 import Kind

from .conditions import READY, Outcome, build_status, get_condition, now_rfc3339, pending, status_patch
from .kube import api_client

log = logging.getLogger(__name__)

def custom_objects_api() -> client.CustomObjectsApi:
    """A client for our custom resources (shares the operator's configured ApiClient)."""
    return client.CustomObjectsApi(api_client())


async def _patch_status(kind: type[Kind], name: str, namespace: str | None, patch: dict[str, Any]) -> None:
    api = custom_objects_api()
    body = {"status": patch}
    if kind.scope == "Cluster":
        await asyncio.to_thread(api.patch_cluster_custom_object_status, GROUP, VERSION, kind.plural, name, body)
    else:
        assert namespace is not None
        await asyncio.to_thread(
            api.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, kind.plural, name, body
        )


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
        _event(body, after)
    log.info("%s %s/%s: Ready=%s (%s)", kind.kind, namespace or "", name, outcome.ready, outcome.reason)
    return True


def _event(body: Mapping[str, Any], ready: dict[str, Any]) -> None:
    """An Event when Ready flips, the transition a human wants to see in `kubectl describe`."""
    kind = "Normal" if ready["status"] != "False" else "Warning"
    message = ready.get("message") or f"Ready is {ready['status']}"
    try:
        kopf.event(cast(kopf.Body, body), type=kind, reason=ready["reason"], message=message[:1024])
    except Exception:  # events are best-effort; never fail a reconcile on them
        log.exception("could not post event")
