"""The runtime's metrics: reconciles by kind and result, their duration, queue depth, the active replica.

Real queues (Kicker) and a real prometheus-client registry served over HTTP; the reconciles are
small coroutines that succeed, fail or are refused by the write guard.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from smtpinfra_kube import Paused
from smtpinfra_operator.kicker import Kicker
from smtpinfra_operator.metrics import RuntimeMetrics, serve


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def eventually(check: Callable[[], bool]) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def test_each_reconcile_is_counted_by_result_and_timed() -> None:
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    paused = False

    async def reconcile(key: str) -> None:
        if key == "bad":
            raise ValueError("broken spec")
        if key == "refused":
            raise Paused("PATCH", "/apis/smtpinfra.com/v1alpha1/tenants/x/status")

    async def scenario() -> None:
        nonlocal paused
        queue: Kicker[str] = Kicker(reconcile, delay=0.0, paused=lambda: paused,
                                    observe=lambda result, seconds: metrics.observe("Tenant", result, seconds))
        queue.RETRIES = 0
        queue.PARKED_POLL = 3600  # parked keys stay parked for this test
        metrics.track_queue("Tenant", queue.pending)
        queue.kick("good")
        queue.kick("bad")
        await eventually(lambda: (sample(registry, "smtpinfra_operator_reconcile_total", kind="Tenant",
                                         result="error") or 0) == 1
                         and (sample(registry, "smtpinfra_operator_reconcile_total", kind="Tenant",
                                     result="ok") or 0) == 1)
        queue.kick("refused")
        await eventually(lambda: queue.parked() == 1)
        paused = True
        queue.kick("later")
        await eventually(lambda: queue.parked() == 2)
        assert sample(registry, "smtpinfra_operator_queue_depth", kind="Tenant") == 2

    asyncio.run(asyncio.wait_for(scenario(), timeout=20))
    assert sample(registry, "smtpinfra_operator_reconcile_total", kind="Tenant", result="parked") == 2
    # Three reconciles ran (good, bad, refused); the one parked before it ran has no duration.
    assert sample(registry, "smtpinfra_operator_reconcile_duration_seconds_count", kind="Tenant") == 3


def test_the_active_gauge_follows_the_gate_and_metrics_are_served_over_http() -> None:
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    active = True
    metrics.track_active("smtp-infra", lambda: active)
    assert sample(registry, "smtpinfra_operator_active", peering="smtp-infra") == 1
    active = False
    assert sample(registry, "smtpinfra_operator_active", peering="smtp-infra") == 0

    with socket.socket() as probe:  # a free port (the test runs in its own network namespace)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert serve(registry, port, addr="127.0.0.1")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert [s.value for s in families["smtpinfra_operator_active"].samples] == [0.0]
    assert "smtpinfra_operator_reconcile" in families  # the counter (its name without _total)
    # A port already taken is reported, not fatal.
    assert not serve(CollectorRegistry(), port, addr="127.0.0.1")
