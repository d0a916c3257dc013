"""Which replica is active when several run with Kopf peering.

Kopf pauses its own watch streams in favour of a live peer with a higher (or the same)
priority, but our queues, informers and resync loop run beside Kopf, not through it. This module
applies Kopf's rule to them: watch the ClusterKopfPeering object and stay quiet while another live
peer has a priority >= ours. Every queue asks the gate before it runs a key, and the Kubernetes
client asks it before any write. The runtime builds one gate at start-up and hands it to
every queue.
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

from smtpinfra_kube import Informer, KubeApi

log = logging.getLogger(__name__)
PEERING_GROUP = "kopf.dev/v1"


@dataclass(frozen=True)
class Peering:
    """This replica's place in a peering (None of it when standalone)."""

    name: str
    identity: str
    priority: int


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


class Gate:
    """Whether this replica may reconcile and write now, by Kopf's rule, from a watch of the peering.

    The ClusterKopfPeering object (the replicas' keep-alives) is held by an informer, so the
    decision is a look at memory, not a GET per reconcile, and it is taken again at every call:
    a peer's keep-alive expires with time alone, without any event. Until the informer has listed
    (or while the object is missing) a peered replica counts as paused: it cannot know better.
    Standalone (`me` None) is always active.
    """

    def __init__(self, me: Peering | None) -> None:
        self.me = me
        self._informer: Informer | None = None

    def start(self, kube: KubeApi) -> None:
        """Start watching the peering object (no-op standalone)."""
        if self.me is not None and self._informer is None:
            self._informer = kube.informer(PEERING_GROUP, "ClusterKopfPeering")

    def blockers(self, now: datetime | None = None) -> list[str] | None:
        """Live peers that make us pause; None when the peering cannot be read yet."""
        if self.me is None:
            return []
        if self._informer is None or not self._informer.synced.is_set():
            return None
        body = self._informer.get("", self.me.name)
        if body is None:
            return None
        return blocking_peers(body.get("status") or {}, self.me, now)

    def paused(self) -> bool:
        """Whether another replica is active (or we cannot tell yet): then nothing may be written."""
        return self.blockers() != []

    def may_write(self, path: str) -> bool:
        """The write guard `Client.identify` installs: only the peering's own coordination passes while paused.

        Kopf's keep-alives (and the create of a missing peering object) are how replicas agree on
        who works; they are not reconciliation, so they are the one resource exempt.
        """
        return "/clusterkopfpeerings" in path or not self.paused()


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


__all__ = ["Gate", "Peering", "blocking_peers", "default_priority", "own_identity"]
