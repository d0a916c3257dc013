"""Writes status and Events: the only place controllers touch the API for status.

Writes go to the status subresource as JSON merge patches, and only when something changed,
so re-deriving an unchanged outcome on a timer costs a comparison, not a write (and a write
never re-triggers a handler: Kopf reacts to spec and metadata changes, not status).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from smtpinfra_api.meta import GROUP, VERSION
from smtpinfra_api.v1alpha1 import Kind
from smtpinfra_kube import KubeApi

from .conditions import READY, RECONCILING, STALLED, Outcome, build_status, get_condition, status_patch

log = logging.getLogger(__name__)
RFC3339 = "%Y-%m-%dT%H:%M:%SZ"
"""How metav1.Time serialises (second precision, Z)."""


class StatusWriter:
    """Publishes outcomes to the status subresource and posts Events, through the given client."""

    EVENT_CONCURRENCY = 4

    def __init__(self, kube: KubeApi, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.kube = kube
        self._now = now
        """The clock of every timestamp written (conditions' lastTransitionTime, Events)."""
        self._event_slots = asyncio.Semaphore(self.EVENT_CONCURRENCY)
        self._event_tasks: set[asyncio.Task[None]] = set()

    async def _patch_status(self, kind: type[Kind], name: str, namespace: str | None, patch: dict[str, Any]) -> None:
        await self.patch_status(kind, name, namespace, {"status": patch})

    async def patch_status(self, kind: type[Kind], name: str, namespace: str | None, body: dict[str, Any]) -> None:
        """JSON-merge-patch an object's status subresource; the informers see the result at once."""
        if kind.scope == "Cluster":
            path = f"/apis/{GROUP}/{VERSION}/{kind.plural}/{quote(name)}/status"
        else:
            assert namespace is not None
            path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{kind.plural}/{quote(name)}/status"
        written = await asyncio.to_thread(self.kube.request, "PATCH", path, body=body,
                                          content_type="application/merge-patch+json")
        if isinstance(written, dict):
            self.kube.remember(written)  # the informers that keep status see our write at once

    async def publish(self, kind: type[Kind], body: Mapping[str, Any], outcome: Outcome) -> bool:
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
        now = self._now().strftime(RFC3339)
        desired = build_status(current, outcome, generation, now)
        patch = status_patch(current, desired)
        if not patch:
            return False
        await self._patch_status(kind, name, namespace, patch)
        after = get_condition(desired, READY)
        previous_status = before["status"] if before else None
        if after and after["status"] != previous_status and not _routine(current, before, outcome):
            self._event(body, after)
        log.info("%s %s/%s: Ready=%s (%s)", kind.kind, namespace or "", name, outcome.ready, outcome.reason)
        return True

    def _event(self, body: Mapping[str, Any], ready: dict[str, Any]) -> None:
        """An Event when Ready flips, the transition a human wants to see in `kubectl describe`."""
        kind = "Normal" if ready["status"] != "False" else "Warning"
        self.post_event_soon(body, kind, ready["reason"], ready.get("message") or f"Ready is {ready['status']}")

    def post_event_soon(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Post an Event in the background: a reconcile does not wait for it (best effort anyway).

        Two or three Events per new SmtpServer, posted inline, sat on the path to its status write;
        a few at a time in the background keep a burst of Events from crowding out reconciles.
        """
        event, name = _event_body(body, type_, reason, message, self._now()), body["metadata"]["name"]

        async def post() -> None:
            async with self._event_slots:
                await asyncio.to_thread(self._post, event, name)

        task = asyncio.get_running_loop().create_task(post())
        self._event_tasks.add(task)
        task.add_done_callback(self._event_tasks.discard)

    def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Post a core/v1 Event about an object (blocking, best effort: never fail a reconcile on it).

        Written directly rather than through kopf.event(), because reconciles run outside
        Kopf's handler context (queues, resync).
        """
        self._post(_event_body(body, type_, reason, message, self._now()), body["metadata"]["name"])

    def _post(self, event: dict[str, Any], name: str) -> None:
        try:
            self.kube.request("POST", f"/api/v1/namespaces/{quote(event['metadata']['namespace'])}/events",
                              body=event)
        except Exception:
            log.exception("could not post event %s for %s", event["reason"], name)


def _routine(current: dict[str, Any], before: Mapping[str, Any] | None, outcome: Outcome) -> bool:
    """Whether a change of Ready is the normal course of a new object converging (pure).

    A new object that starts converging (pods starting) gets no Event, and neither does the end of
    that first convergence (Ready at last) or a first status that is Ready at once (a Tenant; a
    server whose pods started before its first write): `lastTransitionTime` records them, and an
    Event per new object in a burst of 200 servers or 1,000 tenants was one more write each for
    nothing a human acts on. The first state
    is recognised by Ready having stayed False since the first status (its lastTransitionTime is
    Stalled's, set together then and not changed since). Every other change of Ready gets its
    Event: failures, stalls, recoveries from them, a Ready object that stops being Ready.
    """
    if before is None:
        return (outcome.reconciling or outcome.ready == "True") and not outcome.stalled
    reconciling, stalled = get_condition(current, RECONCILING) or {}, get_condition(current, STALLED) or {}
    first_state = before.get("lastTransitionTime") is not None and \
        before.get("lastTransitionTime") == stalled.get("lastTransitionTime")
    return (before["status"] != "True" and reconciling.get("status") == "True" and stalled.get("status") != "True"
            and first_state and outcome.ready == "True")


def _event_body(body: Mapping[str, Any], type_: str, reason: str, message: str, at: datetime) -> dict[str, Any]:
    meta = body["metadata"]
    namespace = meta.get("namespace") or "default"
    now = at.strftime(RFC3339)
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
