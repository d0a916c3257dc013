"""The runtime's Prometheus metrics, on a registry the runtime builds at start-up (no module-level registry).

Names are fixed for the dashboard and the alerts: reconciles per kind and result, their
duration, the keys waiting per kind, and whether this replica of a peering is the one working.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)
RESULTS = ("ok", "error", "parked")


class RuntimeMetrics:
    """`smtpinfra_operator_reconcile_*`, `..._queue_depth` and `..._active`, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.reconciles = Counter("smtpinfra_operator_reconcile_total", "Reconciles run, by kind and result "
                                  "(parked: this replica is not the active one)", ["kind", "result"],
                                  registry=registry)
        self.duration = Histogram("smtpinfra_operator_reconcile_duration_seconds", "How long one reconcile took",
                                  ["kind"], registry=registry,
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.queue_depth = Gauge("smtpinfra_operator_queue_depth", "Keys waiting on a kind's queue (parked included)",
                                 ["kind"], registry=registry)
        self.active = Gauge("smtpinfra_operator_active", "1 when this replica reconciles (standalone, or the "
                            "active replica of its peering), else 0", ["peering"], registry=registry)

    def observe(self, kind: str, result: str, seconds: float | None = None) -> None:
        """Count one reconcile of `kind` (and its duration when it ran)."""
        self.reconciles.labels(kind=kind, result=result).inc()
        if seconds is not None:
            self.duration.labels(kind=kind).observe(seconds)

    def track_queue(self, kind: str, depth: Callable[[], int]) -> None:
        """Report a queue's depth, read at each scrape."""
        for result in RESULTS:  # every series exists from the start, so rate() has a baseline
            self.reconciles.labels(kind=kind, result=result)
        self.queue_depth.labels(kind=kind).set_function(lambda: float(depth()))

    def track_active(self, peering: str, active: Callable[[], bool]) -> None:
        """Report whether this replica works, read at each scrape."""
        self.active.labels(peering=peering).set_function(lambda: 1.0 if active() else 0.0)


def serve(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> bool:
    """Serve `registry` on http://addr:port/metrics (a daemon thread; port 0 disables it).

    A port already taken is logged, not fatal: metrics are worth less than reconciling.
    """
    if not port:
        return False
    try:
        start_http_server(port, addr=addr, registry=registry)
    except OSError as error:
        log.error("metrics are not served: cannot listen on %s:%s: %s", addr, port, error)
        return False
    log.info("metrics on http://%s:%s/metrics", addr, port)
    return True
