"""The entry point `smtp-infra operator run` calls: Kopf's settings, the runtime, the metrics endpoint."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import kopf

from smtpinfra_api.meta import GROUP

PEERING_NAME = "smtp-infra"
REQUEST_THREADS = 48
"""Threads for the blocking calls left (status patches, discovery, waits for an informer's first list)."""
DEFAULT_METRICS_PORT = 9090
PEERING_LIFETIME = int(os.environ.get("SMTP_INFRA_PEERING_LIFETIME", "60"))
"""Seconds a replica's keep-alive counts; a replica killed without notice is replaced after this."""


EVENT_DRIVEN_KINDS = frozenset({"Tenant", "SmtpServer"})
"""Kinds reconciled from plain watch events (controllers.tenant, controllers.smtpserver), not Kopf's change handlers."""


class _DiffBaseWhereUsed(kopf.StatusDiffBaseStorage):
    """Kopf's last-handled spec, stored only for kinds whose handlers diff against it.

    Tenants and SmtpServers are reconciled from watch events (a spec change is a new
    generation), so storing it for them was one more status write per object for nothing
    (1,200 in the scale bench). SmtpServer still has a deletion handler (RFC 2136 records),
    which does not need it.
    """

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        if body.get("kind") in EVENT_DRIVEN_KINDS:
            return
        super().store(body=body, patch=patch, essence=essence)

    def build(self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None) -> kopf.BodyEssence:
        """No essence for those kinds either: nothing compares it (nothing stored, no change handler
        reads a diff), and building it deep-copied every watch event of theirs twice (6% of the
        operator's Python time when 200 servers were created at once)."""
        if body.get("kind") in EVENT_DRIVEN_KINDS:
            return cast(kopf.BodyEssence, {})
        return super().build(body=body, extra_fields=extra_fields)


def operator_settings() -> kopf.OperatorSettings:
    """Kopf's settings: bookkeeping in status, not in annotations of the user's objects, and its queueing.

    Annotations would show up as drift in GitOps diffs; `status.kopf` is declared in every
    CRD's schema (with preserve-unknown-fields) so the API server does not prune it.
    """
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = _DiffBaseWhereUsed(field="status.kopf.lastHandledConfiguration")
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # Kopf would post a Kubernetes Event for each INFO log of a handler ("Handler 'on_server'
    # succeeded", thousands in a bulk apply). Our own Events mark the transitions worth a human's
    # attention (statuswriter); Kopf's are posted only for warnings and errors (failing handlers).
    settings.posting.level = logging.WARNING
    # Bound the objects Kopf processes at once: a bulk apply of 1,000 Tenants otherwise holds
    # 1,000 bodies, causes and patches in memory together, and is no faster for it.
    settings.queueing.worker_limit = 32
    # A per-object worker lingers this long for more events of its object while holding one of the
    # 32 slots, and a full pool stops the watch stream of that kind. Kopf's default of 5 s let 32
    # objects through every 5 s in a bulk apply (200 Tenants took 30 s, servers waited behind them).
    settings.queueing.idle_timeout = 0.3
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.peering.lifetime = PEERING_LIFETIME
    settings.peering.stealth = True  # keep-alives every ~minute are noise; pauses/resumes are still logged
    return settings


def _tame_malloc() -> None:
    """Keep glibc from hoarding freed memory (RSS grew to 2-3x the live heap in the scale bench).

    Every thread that allocates gets its own malloc arena, and after one 16 MiB scrypt buffer is
    freed glibc raises its mmap threshold so later large buffers come from those arenas and stay
    resident. Two arenas and a fixed 1 MiB mmap threshold return such memory to the system.
    The same as MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=1048576, without needing the env.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        pass


def run(*, standalone: bool = True, peering_name: str = PEERING_NAME, liveness: str | None = None,
        priority: int | None = None, metrics_port: int = DEFAULT_METRICS_PORT) -> None:
    """Build the runtime and run it with Kopf until interrupted.

    With peering, the replica with the highest priority works and the others wait; `priority`
    defaults to one derived from the pod name and pid, so replicas never tie (a tie freezes all).
    """
    from smtpinfra_kube import Client, KubeConfig

    from .metrics import serve
    from .peering import Peering, default_priority, own_identity
    from .runtime import Runtime

    identity = own_identity()
    me = None
    if not standalone:
        priority = default_priority(identity) if priority is None else priority
        me = Peering(name=peering_name, identity=identity, priority=priority)
    _tame_malloc()
    config = KubeConfig.load()
    kube = Client(config)
    runtime = Runtime(me, kube=kube, kube_config=config)
    kube.identify(identity, None if standalone else runtime.gate.may_write)
    serve(runtime.metrics_registry, metrics_port)

    kopf.configure(debug=os.environ.get("SMTP_INFRA_DEBUG") == "1", log_format=kopf.LogFormat.FULL, log_refkey="object")
    if not standalone:
        logging.getLogger(__name__).info("peering %s as %s with priority %s", peering_name, identity, priority)

    async def main() -> None:
        # Status patches and Events are sync requests run in threads, one per request in flight,
        # which is mostly waiting: a burst of new servers has dozens in flight at once, and with
        # 16 threads they queued in the operator while the API server had room.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(REQUEST_THREADS,
                                                                           thread_name_prefix="kube"))
        await kopf.operator(
            registry=runtime.registry,
            settings=operator_settings(),
            clusterwide=True,
            standalone=standalone,
            # Naming a peering makes Kopf insist on the peering CRD; only do that when asked.
            peering_name=None if standalone else peering_name,
            priority=None if standalone else priority,
            identity=identity,  # type: ignore[arg-type]  # Kopf's Identity is a NewType of str
            liveness_endpoint=liveness,
        )

    asyncio.run(main())
