"""One sender per campaign: a coordination.k8s.io/v1 Lease named `campaign-<name>`.

A sender takes the Lease when nobody holds it, when it already holds it, or when the holder
stopped renewing it for `leaseDurationSeconds`; every write carries the resourceVersion it read,
so two senders racing for an expired Lease cannot both win. The holder renews it every few
seconds and stops sending as soon as a renewal fails (another sender took it over). The progress
annotation rides on the renewals.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from .kube import CampaignApi, Conflict

PROGRESS_ANNOTATION = "smtpinfra.com/progress"
DEFAULT_DURATION = 15
log = logging.getLogger(__name__)


def lease_name(campaign: str) -> str:
    return f"campaign-{campaign}"


def micro_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def is_free(lease: dict[str, Any], me: str, now: datetime) -> bool:
    """May `me` take this Lease now: unheld, held by `me`, or not renewed within its duration."""
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    if not holder or holder == me:
        return True
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    duration = int(spec.get("leaseDurationSeconds") or DEFAULT_DURATION)
    return renewed is None or renewed + timedelta(seconds=duration) < now


def taken(lease: dict[str, Any] | None, name: str, me: str, now: datetime, duration: int,
          progress: str | None = None) -> dict[str, Any]:
    """The Lease body that makes `me` the holder (keeping resourceVersion and other annotations)."""
    body: dict[str, Any] = copy.deepcopy(lease) if lease else {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name}, "spec": {}}
    body.setdefault("apiVersion", "coordination.k8s.io/v1")
    body.setdefault("kind", "Lease")
    spec: dict[str, Any] = body.get("spec") or {}
    body["spec"] = spec
    if spec.get("holderIdentity") != me:
        spec["acquireTime"] = micro_time(now)
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if spec.get("holderIdentity") else 0)
    spec["holderIdentity"] = me
    spec["leaseDurationSeconds"] = duration
    spec["renewTime"] = micro_time(now)
    if progress is not None:
        meta: dict[str, Any] = body.setdefault("metadata", {})
        annotations: dict[str, str] = meta.get("annotations") or {}
        annotations[PROGRESS_ANNOTATION] = progress
        meta["annotations"] = annotations
    return body


class LeaseLost(RuntimeError):
    """Another sender holds the campaign's Lease now: stop sending at once."""


class LeaseHolder:
    """Acquire, renew and release one Lease through a CampaignApi (calls run in a thread)."""

    def __init__(self, api: CampaignApi, namespace: str, name: str, me: str, *, duration: int = DEFAULT_DURATION,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.me = me
        self.duration = duration
        self.clock = clock
        self.current: dict[str, Any] | None = None
        self.holder: str | None = None
        """Who held the Lease when this sender last found it taken."""

    async def try_acquire(self, progress: str | None = None) -> bool:
        lease = await asyncio.to_thread(self.api.get_lease, self.namespace, self.name)
        if lease is not None and not is_free(lease, self.me, self.clock()):
            self.holder = (lease.get("spec") or {}).get("holderIdentity")
            return False
        body = taken(lease, self.name, self.me, self.clock(), self.duration, progress)
        try:
            if lease is None:
                self.current = await asyncio.to_thread(self.api.create_lease, self.namespace, body)
            else:
                self.current = await asyncio.to_thread(self.api.replace_lease, self.namespace, body)
        except Conflict:
            return False
        return True

    async def acquire(self, retry: float = 2.0, on_wait: Callable[[str], None] | None = None) -> None:
        """Wait until this sender holds the Lease."""
        while not await self.try_acquire():
            if on_wait is not None:
                on_wait(self.holder or "another sender")
            await asyncio.sleep(retry)

    async def renew(self, progress: str | None = None) -> None:
        """Renew (and publish progress); LeaseLost when someone else holds it now."""
        if self.current is None:
            raise LeaseLost("the lease was never acquired")
        if (self.current.get("spec") or {}).get("holderIdentity") != self.me:
            raise LeaseLost("the lease is not ours")
        body = taken(self.current, self.name, self.me, self.clock(), self.duration, progress)
        try:
            self.current = await asyncio.to_thread(self.api.replace_lease, self.namespace, body)
        except Conflict:
            raise LeaseLost(f"lease {self.namespace}/{self.name} was taken over") from None

    async def release(self, progress: str | None = None) -> None:
        """Give the Lease up (holder cleared) with the last progress; a lost Lease is left alone."""
        if self.current is None:
            return
        body = taken(self.current, self.name, self.me, self.clock(), self.duration, progress)
        body["spec"]["holderIdentity"] = None
        try:
            self.current = await asyncio.to_thread(self.api.replace_lease, self.namespace, body)
        except Conflict:
            log.warning("lease %s/%s was taken over before it was released", self.namespace, self.name)
