"""Which replica is active when several run with Kopf peering.

Kopf pauses its own watch streams in favour of a live peer with a higher (or the same)
priority, but our resync loop and kickers run beside Kopf, not through it. This module applies
Kopf's rule to them: read the ClusterKopfPeering object and stay quiet while another live peer
has a priority >= ours. Identities and priorities are fixed at start (`configure`).
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from . import kube

log = logging.getLogger(__name__)
PEERING_GROUP = "kopf.dev/v1"


@dataclass(frozen=True)
class Peering:
    """This replica's place in a peering (None of it when standalone)."""

    name: str
    identity: str
    priority: int


_current: Peering | None = None


def own_identity() -> str:
    """POD_ID (the Downward API pod name) when set, else user@host/pid, as Kopf would derive it."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    try:
        user = getpass.getuser()
    except Exception:
        user = "uid-" + str(os.getuid())
    return f"{user}@{socket.gethostname()}/{os.getpid()}"


def default_priority(identity: str | None = None) -> int:
    """A priority that differs between replicas: derived from the pod name (or host) and the pid.

    Two peers with one priority both pause forever (Kopf's rule for a tie), so replicas of one
    Deployment, which share every flag, must not share a priority.
    """
    seed = f"{identity or own_identity()}/{os.getpid()}"
    return 1 + zlib.crc32(seed.encode()) % 1_000_000


def configure(peering: Peering | None) -> None:
    """Record this replica's peering (None: standalone, always active)."""
    global _current
    _current = peering


def current() -> Peering | None:
    """This replica's peering, if any."""
    return _current


def blocking_peers(status: dict[str, Any], me: Peering, now: datetime | None = None) -> list[str]:
    """Live peers (other than us) whose priority makes us pause, by Kopf's rule (pure)."""
    now = now or datetime.now(UTC)
    blockers = []
    for identity, info in (status or {}).items():
        if identity == me.identity or not isinstance(info, dict):
            continue
        try:
            seen = datetime.fromisoformat(str(info.get("lastseen")).replace("Z", "+00:00"))
            deadline = seen + timedelta(seconds=int(info.get("lifetime", 60)))
        except ValueError:
            continue
        if deadline > now and int(info.get("priority", 0)) >= me.priority:
            blockers.append(identity)
    return blockers


async def paused() -> bool:
    """Whether this replica must leave reconciling to another one right now."""
    me = _current
    if me is None:
        return False
    try:
        body = await kube.get(PEERING_GROUP, "ClusterKopfPeering", me.name)
    except (kube.ApiException, kube.KindNotFound, OSError) as error:
        log.warning("cannot read peering %s (%s); not reconciling until it can be read", me.name, error)
        return True
    blockers = blocking_peers((body or {}).get("status") or {}, me)
    if blockers:
        log.debug("paused in favour of %s", blockers)
    return bool(blockers)


__all__ = ["Peering", "blocking_peers", "configure", "current", "default_priority", "own_identity", "paused"]
