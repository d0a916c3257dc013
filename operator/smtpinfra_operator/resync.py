"""Level-based reconciliation without finalizers: one loop re-derives every object periodically.

Kopf's own timers put a finalizer on every object they run for, so deleting an object would
block whenever the operator is down. This loop lists each kind every RESYNC_SECONDS and kicks
the same reconcile functions the event handlers use; the kickers coalesce with events.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from smtpinfra_api.meta import API_VERSION

from . import kube
from .settings import RESYNC_SECONDS

log = logging.getLogger(__name__)


async def resync_once() -> None:
    """Kick a reconcile of every object of every kind we own."""
    from .handlers.ippool import pool_kicker
    from .handlers.smtpserver import server_kicker
    from .handlers.tenant import tenant_kicker
    from .handlers.warmupplan import plan_kicker

    for plan in await kube.list_objects(API_VERSION, "WarmupPlan"):
        plan_kicker.kick(plan["metadata"]["name"])
    for tenant in await kube.list_objects(API_VERSION, "Tenant"):
        tenant_kicker.kick(tenant["metadata"]["name"])
    for pool in await kube.list_objects(API_VERSION, "IpPool"):
        pool_kicker.kick(pool["metadata"]["name"])
    for server in await kube.list_objects(API_VERSION, "SmtpServer"):
        server_kicker.kick((server["metadata"]["namespace"], server["metadata"]["name"]))


async def _loop() -> None:
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        try:
            await resync_once()
        except Exception:  # the API may be briefly unavailable; try again next period
            log.exception("resync failed")


_task: asyncio.Task[None] | None = None


@kopf.on.startup()
async def start_resync(**_: Any) -> None:
    """Start the periodic resync with the operator."""
    global _task
    _task = asyncio.get_running_loop().create_task(_loop())


@kopf.on.cleanup()
async def stop_resync(**_: Any) -> None:
    """Stop it when the operator stops."""
    if _task is not None:
        _task.cancel()
