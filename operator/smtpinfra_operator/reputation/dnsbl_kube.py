"""The blocklist monitor's API access in the running operator: query keys from Secrets, Events on pools.

Kept apart from the monitor so tests give it other callables; the IpPool status is not written
here (the IpPool controller does it from the monitor's results).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from smtpinfra_api.meta import API_VERSION, SecretKeyReference
from smtpinfra_kube import KubeApi

from ..statuswriter import StatusWriter
from ..tenancy import operator_namespace
from .dnsbl_monitor import DnsblMetrics, DnsblMonitor, clock_from_env
from .dnsbl_status import Event

log = logging.getLogger(__name__)


class QueryKeys:
    """Reads a zone's query key from a Secret in the operator's namespace (IpPools are cluster-scoped)."""

    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube

    async def __call__(self, ref: SecretKeyReference) -> str | None:
        namespace = operator_namespace()
        if namespace is None:
            log.warning("no operator namespace (POD_NAMESPACE) to read query key Secret %s from", ref.name)
            return None
        secret = await self.kube.get("v1", "Secret", ref.name, namespace)
        value = ((secret or {}).get("data") or {}).get(ref.key)
        return base64.b64decode(value).decode().strip() if value else None


class _Events:
    """Posts the monitor's Events on the IpPool in the background (the pool's body from the informer)."""

    def __init__(self, kube: KubeApi, status: StatusWriter) -> None:
        self.kube = kube
        self.status = status
        self._tasks: set[asyncio.Task[None]] = set()

    async def _post(self, pool: str, event: Event) -> None:
        body = await self.kube.get_cached(API_VERSION, "IpPool", pool)
        if body is not None:
            self.status.post_event_soon(body, event.type, event.reason, event.message)

    def __call__(self, pool: str, event: Event) -> None:
        task = asyncio.get_running_loop().create_task(self._post(pool, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def monitor(kube: KubeApi, status: StatusWriter, paused: Callable[[], bool], on_change: Callable[[str], None],
            registry: CollectorRegistry) -> DnsblMonitor:
    """The monitor as the operator runs it: DNS, the env's clock, Secrets and Events through the API."""
    return DnsblMonitor(clock=clock_from_env(), on_change=on_change, metrics=DnsblMetrics(registry),
                        read_secret=QueryKeys(kube), post_event=_Events(kube, status), paused=paused)
