"""Level-based reconciliation without finalizers: one loop re-derives every object periodically.

Kopf's own timers put a finalizer on every object they run for, so deleting an object would
block whenever the operator is down. This loop lists each kind every RESYNC_SECONDS and kicks
the same reconcile functions the event handlers use; the kickers coalesce with events. A Ready
SmtpServer is re-derived in full only every FULL_RESYNC_SECONDS (`smtpserver.wants_resync`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import kopf

from smtpinfra_api.meta import API_VERSION

from . import kube, peering, usage
from .settings import RESYNC_SECONDS

log = logging.getLogger(__name__)


async def resync_once(spread: float = 0.0) -> None:
    """Kick a background reconcile of every object of every kind we own, spread over about `spread` seconds.

    Kicking everything at once queued a whole cluster's worth of reconciles in front of the
    next real change (a new server waited behind hundreds of no-op resyncs). Background kicks
    run only while no event-driven reconcile is due, a couple at a time (`Kicker.kick`).
    """
    from .handlers.ippool import pool_kicker
    from .handlers.smtpserver import server_kicker, wants_resync
    from .handlers.tenant import tenant_kicker
    from .handlers.warmupplan import plan_kicker

    kicks: list[Callable[[], None]] = []
    for plan in await kube.list_objects(API_VERSION, "WarmupPlan"):
        kicks.append(functools.partial(plan_kicker.kick, plan["metadata"]["name"], background=True))
    # Tenants and servers come from the informers (names are all we need): listing 1,000 full
    # Tenants every period only to read their names was a large transient allocation.
    for tenant in await kube.list_cached(API_VERSION, "Tenant"):
        kicks.append(functools.partial(tenant_kicker.kick, tenant["metadata"]["name"], background=True))
    for pool in await kube.list_objects(API_VERSION, "IpPool"):
        kicks.append(functools.partial(pool_kicker.kick, pool["metadata"]["name"], background=True))
    for server in await kube.list_cached(API_VERSION, "SmtpServer"):
        key = (server["metadata"]["namespace"], server["metadata"]["name"])
        if wants_resync(key, time.monotonic()):
            kicks.append(functools.partial(server_kicker.kick, key, background=True))
    from .handlers.pending import kick_all as kick_campaigns

    await kick_campaigns()  # background kicks, after the tenants (whose suspension a campaign reads)
    pause = spread / len(kicks) if kicks else 0.0
    for kick in kicks:
        kick()
        if pause:
            await asyncio.sleep(pause)


async def _loop() -> None:
    was_paused = False
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        try:
            paused = await peering.paused()  # another replica is active; Kopf paused our handlers too
            if paused != was_paused:
                log.info("resync %s", "paused: another replica is active" if paused
                         else "resumed: this replica is active")
                was_paused = paused
            if paused:
                continue
            await _collect_usage()
            await resync_once(spread=RESYNC_SECONDS / 2)
        except Exception:  # the API may be briefly unavailable; try again next period
            log.exception("resync failed")


async def _collect_usage() -> None:
    """Read the MTA pods' /stats before the tenants' reconciles, which write it into status.usage."""
    try:
        await usage.collect()
    except Exception:  # e.g. the pods cannot be listed: the tenants keep their last usage
        log.exception("could not collect tenant usage")


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
