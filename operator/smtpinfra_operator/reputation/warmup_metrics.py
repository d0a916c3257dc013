"""Prometheus gauges of the pool addresses' warm-up: state, day and daily cap (names fixed for dashboards)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from smtpinfra_api.v1alpha1 import AddressState


class WarmupMetrics:
    """The warm-up gauges on one registry; the IpPool controller sets them from the status it writes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = Gauge("smtpinfra_operator_address_state", "1 for the current state of a pool address",
                           ["pool", "address", "state"], registry=registry)
        self.day = Gauge("smtpinfra_operator_warmup_day", "Warm-up day of a pool address",
                         ["pool", "address"], registry=registry)
        self.cap = Gauge("smtpinfra_operator_warmup_daily_cap", "Today's warm-up cap of a pool address",
                         ["pool", "address"], registry=registry)

    def observe(self, pool: str, entries: Iterable[Mapping[str, Any]]) -> None:
        """Set the gauges of ``pool`` from its per-address status (camelCase), one series per state."""
        for e in entries:
            address = str(e["address"])
            current = e.get("state")
            for s in AddressState:
                self.state.labels(pool=pool, address=address, state=s.value).set(1 if s.value == current else 0)
            if e.get("warmupDay") is not None:
                self.day.labels(pool=pool, address=address).set(float(e["warmupDay"]))
            if e.get("dailyCap") is not None:
                self.cap.labels(pool=pool, address=address).set(float(e["dailyCap"]))
            elif (pool, address) in self._cap_labels():
                self.cap.remove(pool, address)  # warm: no cap any more

    def forget(self, pool: str) -> None:
        """Drop every series of a pool that is gone (a deleted pool must not stay Held on a dashboard)."""
        for gauge in (self.state, self.day, self.cap):
            for labels in {tuple(s.labels.values()) for m in gauge.collect() for s in m.samples
                           if s.labels.get("pool") == pool}:
                gauge.remove(*labels)

    def _cap_labels(self) -> set[tuple[str, str]]:
        return {(s.labels["pool"], s.labels["address"]) for m in self.cap.collect() for s in m.samples}
