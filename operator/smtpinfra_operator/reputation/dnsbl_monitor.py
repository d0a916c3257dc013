"""The blocklist monitor: asks DNS for every pool address in every zone, on each pool's interval.

An object with everything it touches injected (resolver factory, clock, Secret reader, Event
poster, the IpPool queue, metrics), so tests run it against a real DNS server on a test clock.
It writes no status: it keeps its results (`view`) and puts the pool's key on the IpPool queue
(`on_change`); the IpPool controller publishes them. The decisions are in `dnsbl`/`dnsbl_status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from smtpinfra_api.meta import SecretKeyReference
from smtpinfra_api.v1alpha1 import IpPoolSpec

from .dnsbl import (
    IPV4_TEST_CLEAN,
    IPV4_TEST_LISTED,
    IPV6_TEST_CLEAN,
    IPV6_TEST_LISTED,
    Classified,
    Lookup,
    SelfTest,
    classify,
    query_name,
    self_test,
)
from .dnsbl_resolver import DnsResolver, Resolver
from .dnsbl_status import Event, PoolConfig, PoolView, advance, pool_config, restore, transitions

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
FAKE_TIME_ENV = "SMTP_INFRA_FAKE_TIME_FILE"


def system_clock() -> datetime:
    return datetime.now(UTC)


def file_clock(path: Path) -> Clock:
    """A clock that reads the time from a file (ISO timestamp or epoch seconds), for tests that run days."""

    def now() -> datetime:
        try:
            text = path.read_text().strip()
        except OSError:
            return system_clock()
        try:
            return datetime.fromtimestamp(float(text), UTC)
        except ValueError:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return when if when.tzinfo else when.replace(tzinfo=UTC)

    return now


def clock_from_env() -> Clock:
    """`SMTP_INFRA_FAKE_TIME_FILE` (the MTA's test clock too) when set, else the system clock."""
    path = os.environ.get(FAKE_TIME_ENV)
    return file_clock(Path(path)) if path else system_clock


class DnsblMetrics:
    """The monitor's Prometheus series (names fixed by the dashboard and alerts).

    The per-(address, zone) and per-zone gauges are read from the latest views when Prometheus
    scrapes (a custom collector), not set on every check: a /24 in five zones is 1,280 series,
    and setting 5,000 labelled gauges cost half of a 1,000-address check.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._views: dict[str, PoolView] = {}
        registry.register(_StateCollector(self._views))
        self.duration = Histogram("smtpinfra_operator_dnsbl_check_duration_seconds",
                                  "Duration of one check of every pool address in every zone", ["pool"],
                                  registry=registry, buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120))
        self.listings = Counter("smtpinfra_operator_dnsbl_listings", "Listings confirmed",
                                ["pool", "address", "zone"], registry=registry)

    def record(self, config: PoolConfig, prev: PoolView, view: PoolView, seconds: float) -> None:
        self.duration.labels(config.name).observe(seconds)
        self._views[config.name] = view
        for address, row in view.states.items():
            before = prev.states.get(address, {})
            for zone, state in row.items():
                was = before.get(zone)
                if state.state.listed and not (was and was.state.listed):
                    self.listings.labels(config.name, address, zone).inc()

    def forget(self, config: PoolConfig) -> None:
        self._views.pop(config.name, None)
        for zone in config.zones:
            for address in config.addresses:
                _remove(self.listings, config.name, address, zone)
        _remove(self.duration, config.name)


class _StateCollector(Collector):
    """`smtpinfra_operator_dnsbl_listed` and `_zone_usable` from the pools' latest views, at scrape time.

    Runs in the metrics server's thread: it copies the mapping first, and views are replaced, never changed.
    """

    def __init__(self, views: dict[str, PoolView]) -> None:
        self._views = views

    def collect(self) -> Iterator[GaugeMetricFamily]:
        listed = GaugeMetricFamily("smtpinfra_operator_dnsbl_listed", "1 when the zone lists the address (confirmed)",
                                   labels=["pool", "address", "zone"])
        usable = GaugeMetricFamily("smtpinfra_operator_dnsbl_zone_usable", "1 when the zone passes its self-test",
                                   labels=["pool", "zone"])
        for pool, view in list(self._views.items()):
            for zone, health in view.zones.items():
                usable.add_metric([pool, zone], 1 if health.test.usable else 0)
            for address, row in view.states.items():
                for zone, state in row.items():
                    listed.add_metric([pool, address, zone], 1 if state.state.listed else 0)
        yield listed
        yield usable


def _remove(metric: Gauge | Counter | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never recorded
        metric.remove(*labels)


@dataclass
class _Pool:
    config: PoolConfig
    view: PoolView = field(default_factory=PoolView)
    started: datetime | None = None
    """When (on the monitor's clock) the last check started."""
    running: asyncio.Task[PoolView] | None = None


ResolverFactory = Callable[[str | None, float], Resolver]
ReadSecret = Callable[[SecretKeyReference], Awaitable[str | None]]
PostEvent = Callable[[str, Event], None]


class DnsblMonitor:
    """Every pool address in every zone, each pool on its own interval, a bounded number of queries in flight."""

    CONCURRENCY = 50
    """Queries in flight at once (per check): with a 1 MiB receive buffer 100 or 200 lose nothing, but a
    check of 5,000 queries is then bound by this process's CPU, not by waiting (bench/dnsbl_monitor.py)."""
    TICK = 1.0
    """How often (real seconds) the loop looks for pools that are due on the monitor's clock."""

    def __init__(self, *, clock: Clock, on_change: Callable[[str], None], metrics: DnsblMetrics,
                 resolver_factory: ResolverFactory = DnsResolver, read_secret: ReadSecret | None = None,
                 post_event: PostEvent | None = None, concurrency: int | None = None,
                 paused: Callable[[], bool] = lambda: False) -> None:
        self._clock = clock
        self._on_change = on_change
        self._metrics = metrics
        self._resolver_factory = resolver_factory
        self._read_secret = read_secret
        self._post_event = post_event
        self._concurrency = concurrency or self.CONCURRENCY
        self._paused = paused
        """True while another replica of the peering works: this one checks nothing."""
        self._pools: dict[str, _Pool] = {}
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ what the controller calls

    def configure(self, name: str, spec: IpPoolSpec, status: dict[str, Any] | None = None) -> None:
        """Track a pool (its latest spec); the first time, resume from the states its status published."""
        config = pool_config(name, spec)
        pool = self._pools.get(name)
        if pool is None:
            self._pools[name] = _Pool(config, restore(config, (status or {}).get("addresses") or []))
        elif pool.config != config:
            pool.config = config
            pool.started = None  # a changed spec is checked at once

    def forget(self, name: str) -> None:
        pool = self._pools.pop(name, None)
        if pool is not None:
            if pool.running is not None:
                pool.running.cancel()
            self._metrics.forget(pool.config)

    def view(self, name: str) -> tuple[PoolConfig, PoolView] | None:
        """The pool's current results (None when not tracked)."""
        pool = self._pools.get(name)
        return (pool.config, pool.view) if pool is not None else None

    def quarantined(self, name: str, address: str) -> bool:
        pool = self._pools.get(name)
        return pool is not None and pool.view.quarantined(address)

    # ------------------------------------------------------------------ the checks

    async def check(self, name: str) -> PoolView:
        """One check of every address of the pool in every zone, now; returns (and keeps) the new view."""
        pool = self._pools[name]
        config = pool.config
        now = self._clock()
        pool.started = now
        began = time.perf_counter()
        if not config.zones:
            view = PoolView()
        else:
            tests, answers = await self._ask(config)
            view = advance(config, pool.view, tests, answers, now)
        prev, pool.view = pool.view, view
        self._metrics.record(config, prev, view, time.perf_counter() - began)
        for event in transitions(config, prev, view):
            log.info("IpPool %s: %s: %s", name, event.reason, event.message)
            if self._post_event is not None:
                self._post_event(name, event)
        self._on_change(name)
        return view

    async def _ask(self, config: PoolConfig) -> tuple[dict[str, SelfTest], dict[tuple[str, str], Classified]]:
        resolver = self._resolver_factory(config.resolver, config.timeout)
        try:
            return await self._ask_with(config, resolver)
        finally:
            resolver.close()

    async def _ask_with(self, config: PoolConfig, resolver: Resolver) -> tuple[dict[str, SelfTest],
                                                                               dict[tuple[str, str], Classified]]:
        keys: dict[str, str | None] = {}
        missing: dict[str, SelfTest] = {}
        for zone in config.zones:
            ref = config.keys.get(zone)
            if ref is None:
                keys[zone] = None
                continue
            key = await self._read_secret(ref) if self._read_secret is not None else None
            if not key:
                missing[zone] = SelfTest(False, "QueryKeyMissing", f"query key {ref.name}/{ref.key} not readable")
            keys[zone] = key
        zones = [z for z in config.zones if z not in missing]
        points = [IPV4_TEST_LISTED, IPV4_TEST_CLEAN] + ([IPV6_TEST_LISTED, IPV6_TEST_CLEAN] if config.has_ipv6 else [])
        wanted = [(p, z) for z in zones for p in points] + [(a, z) for z in zones for a in config.addresses]
        found = await self._lookup_all(resolver, [query_name(a, z, keys[z]) for a, z in wanted])
        classified = {pair: classify(lookup, config.errors.get(pair[1], frozenset()))
                      for pair, lookup in zip(wanted, found, strict=True)}
        tests = dict(missing)
        for zone in zones:
            c = [classified[(p, zone)] for p in points]
            tests[zone] = self_test(*c)
        return tests, {k: v for k, v in classified.items() if k[0] not in points}

    async def _lookup_all(self, resolver: Resolver, names: list[str]) -> list[Lookup]:
        """Every name looked up, at most `concurrency` queries in flight (the resolver's batch path)."""
        return await resolver.lookup_many(names, self._concurrency)

    # ------------------------------------------------------------------ the loop

    def due(self, now: datetime) -> list[str]:
        """Pools whose interval has passed on the monitor's clock and that are not being checked."""
        return [name for name, p in self._pools.items()
                if (p.running is None or p.running.done())
                and (p.started is None or now - p.started >= p.config.interval or now < p.started)]

    async def run(self) -> None:
        """Check each pool when it is due, until cancelled; one failing check never stops the others."""
        while True:
            for name in [] if self._paused() else self.due(self._clock()):
                pool = self._pools[name]
                pool.started = self._clock()
                pool.running = asyncio.get_running_loop().create_task(self._guarded(name))
            await asyncio.sleep(self.TICK)

    async def _guarded(self, name: str) -> PoolView:
        try:
            return await self.check(name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("blocklist check of IpPool %s failed; next interval tries again", name)
            return PoolView()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        tasks: list[asyncio.Task[Any]] = [p.running for p in self._pools.values() if p.running is not None]
        if self._task is not None:
            tasks.append(self._task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
