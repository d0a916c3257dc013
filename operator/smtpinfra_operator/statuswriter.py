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

from .conditions import READY, Outcome, build_status, get_condition, now_rfc3339, status_patch
from .kube import api_client, remember, request

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
    written = await asyncio.to_thread(request, "PATCH", path, body={"status": patch},
                                      content_type="application/merge-patch+json")
    if isinstance(written, dict):
        remember(written)  # the informers that keep status see our write at once


async def publish(kind: type[Kind], body: Mapping[str, Any], outcome: Outcome) -> bool:
    """Bring the object's status in line with the outcome; returns whether anything was written.

    The first status an object gets is its first outcome: Ready=Unknown (reason Pending) while
    the operator cannot tell yet, else the answer with Reconciling/Stalled. (A Ready=Unknown
    written just before the answer, in the same moment, told a watcher nothing and cost a
    status write and a watch event per new object.)
    """
    meta = body["metadata"]
    name, namespace = meta["name"], meta.get("namespace")
    generation = meta.get("generation")
    current: dict[str, Any] = dict(body.get("status") or {})
    before = get_condition(current, READY)
    now = now_rfc3339()
    desired = build_status(current, outcome, generation, now)
    patch = status_patch(current, desired)
    if not patch:
        return False
    await _patch_status(kind, name, namespace, patch)
    after = get_condition(desired, READY)
    previous_status = before["status"] if before else None
    # A new object still converging (pods starting) is not a transition worth an Event; the
    # Event comes when it becomes Ready, or when it is stuck.
    first_progress = before is None and outcome.reconciling and not outcome.stalled
    if after and after["status"] != previous_status and not first_progress:
        _event(body, after)
    log.info("%s %s/%s: Ready=%s (%s)", kind.kind, namespace or "", name, outcome.ready, outcome.reason)
    return True


def _event(body: Mapping[str, Any], ready: dict[str, Any]) -> None:
    """An Event when Ready flips, the transition a human wants to see in `kubectl describe`."""
    kind = "Normal" if ready["status"] != "False" else "Warning"
    post_event_soon(body, kind, ready["reason"], ready.get("message") or f"Ready is {ready['status']}")


EVENT_CONCURRENCY = 4
_event_slots: asyncio.Semaphore | None = None
_event_tasks: set[asyncio.Task[None]] = set()


def post_event_soon(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Post an Event in the background: a reconcile does not wait for it (best effort anyway).

    Two or three Events per new SmtpServer, posted inline, sat on the path to its status write;
    a few at a time in the background keep a burst of Events from crowding out reconciles.
    """
    global _event_slots
    if _event_slots is None:
        _event_slots = asyncio.Semaphore(EVENT_CONCURRENCY)
    slots, event, name = _event_slots, _event_body(body, type_, reason, message), body["metadata"]["name"]

    async def post() -> None:
        async with slots:
            await asyncio.to_thread(_post, event, name)

    task = asyncio.get_running_loop().create_task(post())
    _event_tasks.add(task)
    task.add_done_callback(_event_tasks.discard)


def post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Post a core/v1 Event about an object (best effort: never fail a reconcile on it).

    Written directly rather than through kopf.event(), because reconciles also run outside
    Kopf's handler context (resync loop, kicks from related objects).
    """
    _post(_event_body(body, type_, reason, message), body["metadata"]["name"])


def _event_body(body: Mapping[str, Any], type_: str, reason: str, message: str) -> dict[str, Any]:
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
    return event


def _post(event: dict[str, Any], name: str) -> None:
    try:
        request("POST", f"/api/v1/namespaces/{quote(event['metadata']['namespace'])}/events", body=event)
    except Exception:
        log.exception("could not post event %s for %s", event["reason"], name)
