"""What every controller is made of: its dependencies, and one queue whose keys run `reconcile(key)`.

A controller owns one kind. Its event sources (Kopf's watch of the kind, informers of its
children and pods, related kinds, the resync) only put keys on its queue (`kick`); the queue
asks the peering gate before it runs a key and counts each run in the runtime's metrics. The
dependencies are handed in by the runtime (`Runtime`) at start-up, never looked up globally,
so a controller can be built in a test with a fake client, gate or clock.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

from smtpinfra_kube import KubeApi

from .kicker import Kicker
from .metrics import RuntimeMetrics
from .statuswriter import StatusWriter

K = TypeVar("K", bound=Hashable)
Q = TypeVar("Q", bound=Hashable)


@dataclass(frozen=True)
class Clock:
    """Wall time for what is written (warm-up days, timestamps) and monotonic time for ages; both injectable."""

    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    monotonic: Callable[[], float] = field(default=time.monotonic)


@dataclass(frozen=True)
class Deps:
    """What the runtime hands every controller."""

    kube: KubeApi
    status: StatusWriter
    metrics: RuntimeMetrics
    paused: Callable[[], bool]
    """The peering gate's verdict: True while another replica works (then nothing runs)."""
    clock: Clock = field(default_factory=Clock)


class Controller(Generic[K]):
    """One kind's queue and reconcile; subclasses implement `reconcile`."""

    kind: str = ""
    DELAY = 0.3
    CONCURRENCY = 4

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.kube = deps.kube
        self.clock = deps.clock
        self.queue: Kicker[K] = self.make_queue(self.reconcile, self.kind)

    def make_queue(self, run: Callable[[Q], Awaitable[object]], name: str,
                   concurrency: int | None = None) -> Kicker[Q]:
        """A queue for `run` that obeys the gate and reports as `name` in the metrics."""
        queue: Kicker[Q] = Kicker(run, delay=self.DELAY,
                                  concurrency=concurrency or self.CONCURRENCY, paused=self.deps.paused,
                                  observe=functools.partial(self.deps.metrics.observe, name))
        self.deps.metrics.track_queue(name, queue.pending)
        return queue

    def kick(self, key: K, delay: float | None = None, background: bool = False) -> None:
        """Put `key` on this controller's queue (see `Kicker.kick`)."""
        self.queue.kick(key, delay=delay, background=background)

    async def reconcile(self, key: K) -> None:
        """Gather (reads only), decide (pure), apply the children, publish the status."""
        raise NotImplementedError
