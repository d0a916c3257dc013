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
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import dns.asyncquery
import dns.entropy
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from smtpinfra_api.meta import SecretKeyReference
from smtpinfra_api.v1alpha1 import IpPoolSpec

from ..dns.verify import parse_nameserver
from .dnsbl import (
    IPV4_TEST_CLEAN,
    IPV4_TEST_LISTED,
    IPV6_TEST_CLEAN,
    IPV6_TEST_LISTED,
    AnswerKind,
    Classified,
    Lookup,
    SelfTest,
    classify,
    query_name,
    self_test,
)
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


class Resolver(Protocol):
    async def lookup(self, name: str) -> Lookup: ...

    def close(self) -> None: ...


def question_wire(name: str) -> bytes:
    """The question section of an A/IN query for `name` (RFC 1035 §4.1.2), uncompressed."""
    labels = [label.encode("ascii") for label in name.rstrip(".").split(".")]
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00\x00\x01\x00\x01"


_QUERY_FLAGS = 0x0100  # RD: a resolver the pool names recurses; an authoritative server ignores it
_TRUNCATED = Lookup(AnswerKind.FAILURE, detail="truncated")


class _Datagrams:
    """One UDP socket for every query of a check: an answer goes to the query waiting for its id and question.

    `dns.asyncquery.udp` opens a socket per query and dnspython builds and parses every message in
    full; for 5,000 queries a check that cost 5-10x the DNS itself (bench/dnsbl_monitor.py). Here a
    query is its 12-byte header plus the question, the usual NXDOMAIN answer is read from its header
    (id, QR, RCODE) and echoed question, the usual listing answer by `read_a_answer`, and dnspython
    parses the rest. The socket is read until empty on each wake-up (asyncio's datagram transport
    reads one datagram per turn of the loop, one epoll call per answer).
    """

    def __init__(self, host: str, port: int) -> None:
        self.waiting: dict[int, tuple[bytes, asyncio.Future[Lookup]]] = {}
        self._loop = asyncio.get_running_loop()
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.connect((host, port))  # connected: the kernel drops datagrams from anyone else
        except OSError:
            self.sock.close()
            raise
        self._loop.add_reader(self.sock.fileno(), self._readable)
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def _readable(self) -> None:
        for _ in range(1024):  # bounded, so a flood cannot hold the loop
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable: every query fails now
                self.error_received(exc)
                return
            self.datagram_received(data)

    def datagram_received(self, data: bytes) -> None:
        if len(data) < 12:
            return
        waiting = self.waiting.get(int.from_bytes(data[:2], "big"))
        if waiting is None or waiting[1].done() or not data[2] & 0x80:
            return  # late (timed out), foreign or not a response: ignored, as dnspython's receive_udp does
        question, future = waiting
        if data[4:6] != b"\x00\x01" or data[12:12 + len(question)].lower() != question.lower():
            return
        if data[2] & 0x02:  # TC
            future.set_result(_TRUNCATED)
        elif data[3] & 0x0F == dns.rcode.NXDOMAIN:
            future.set_result(Lookup(AnswerKind.NXDOMAIN))
        elif (fast := read_a_answer(data, 12 + len(question))) is not None:
            future.set_result(fast)
        else:
            try:
                future.set_result(_lookup(dns.message.from_wire(data)))
            except dns.exception.DNSException as error:  # malformed: no answer
                future.set_result(Lookup(AnswerKind.FAILURE, detail=f"malformed answer: {error}"))

    def error_received(self, exc: Exception) -> None:
        for _, future in self.waiting.values():  # e.g. ICMP port unreachable: every query fails now
            if not future.done():
                future.set_exception(exc)


def _time_out(future: asyncio.Future[Lookup]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class DnsResolver:
    """A-record lookups straight to one resolver over one UDP socket (TCP with dnspython when truncated).

    No cache and no search list: every check asks afresh. A referral (an authoritative server that
    does not recurse answering for another zone) is a failure, not "not listed".
    """

    def __init__(self, nameserver: str | None, timeout: float, retries: int = 1) -> None:
        if nameserver:
            self.host, self.port = parse_nameserver(nameserver)
        else:
            system = dns.resolver.Resolver()
            self.host, self.port = str(system.nameservers[0]), int(system.port)
        self.timeout = timeout
        self.retries = retries
        self._protocol: _Datagrams | None = None

    async def _endpoint(self) -> _Datagrams:
        if self._protocol is None or self._protocol.closed:
            self._protocol = _Datagrams(self.host, self.port)
        return self._protocol

    async def _udp(self, question: bytes) -> Lookup:
        endpoint = await self._endpoint()
        qid = dns.entropy.random_16()
        while qid in endpoint.waiting:
            qid = dns.entropy.random_16()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Lookup] = loop.create_future()
        endpoint.waiting[qid] = (question, future)
        # A timer on the future rather than asyncio.wait_for, whose extra future and callbacks per query
        # were a tenth of a check's CPU.
        timer = loop.call_later(self.timeout, _time_out, future)
        try:
            endpoint.send(struct.pack("!HHHHHH", qid, _QUERY_FLAGS, 1, 0, 0, 0) + question)
            return await future
        finally:
            timer.cancel()
            endpoint.waiting.pop(qid, None)

    async def lookup(self, name: str) -> Lookup:
        question = question_wire(name)
        detail = ""
        for _ in range(self.retries + 1):
            try:
                found = await self._udp(question)
                if found is _TRUNCATED:
                    query = dns.message.make_query(name, dns.rdatatype.A)
                    found = _lookup(await dns.asyncquery.tcp(query, self.host, timeout=self.timeout, port=self.port))
            except (TimeoutError, dns.exception.Timeout):
                detail = f"timeout after {self.timeout:g}s"
                continue
            except (OSError, dns.exception.DNSException) as error:
                detail = f"{type(error).__name__}: {error}"
                continue
            return found
        return Lookup(AnswerKind.FAILURE, detail=detail)

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
        self._protocol = None


_RR = struct.Struct("!HHIH")  # TYPE, CLASS, TTL, RDLENGTH after an owner name


def read_a_answer(data: bytes, offset: int) -> Lookup | None:
    """A NOERROR response whose answers all have compressed owner names, read without dnspython (pure).

    That is what a blocklist answers for a listed name (and the error and list-everything zones for
    every name): dnspython's full parse of them was a third of a check's CPU. `offset` is where the
    answer section starts (after the echoed question). None for anything else (another RCODE, an
    uncompressed owner name, a section that does not add up): dnspython reads those, the same way.
    """
    if data[3] & 0x0F != dns.rcode.NOERROR:
        return None
    addresses = []
    for _ in range(int.from_bytes(data[6:8], "big")):
        if offset + 12 > len(data) or data[offset] & 0xC0 != 0xC0:
            return None
        rtype, rclass, _ttl, length = _RR.unpack_from(data, offset + 2)
        offset += 12
        if offset + length > len(data):
            return None
        if rtype == dns.rdatatype.A and rclass == dns.rdataclass.IN:
            if length != 4:
                return None
            addresses.append(socket.inet_ntoa(data[offset:offset + 4]))
        offset += length
    if addresses:
        return Lookup(AnswerKind.ADDRESSES, tuple(dict.fromkeys(addresses)))  # an RRset holds each once
    if data[2] & 0x04 or data[3] & 0x80:  # AA or RA
        return Lookup(AnswerKind.NODATA)
    return Lookup(AnswerKind.FAILURE, detail="referral: the resolver does not recurse")


def _lookup(response: dns.message.Message) -> Lookup:
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return Lookup(AnswerKind.NXDOMAIN)
    if rcode != dns.rcode.NOERROR:
        return Lookup(AnswerKind.FAILURE, detail=dns.rcode.to_text(rcode))
    addresses = tuple(rd.address for rrset in response.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)
    if addresses:
        return Lookup(AnswerKind.ADDRESSES, addresses)
    if response.flags & (dns.flags.AA | dns.flags.RA):
        return Lookup(AnswerKind.NODATA)
    return Lookup(AnswerKind.FAILURE, detail="referral: the resolver does not recurse")


class DnsblMetrics:
    """The monitor's Prometheus series (names fixed by the dashboard and alerts)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.listed = Gauge("smtpinfra_operator_dnsbl_listed", "1 when the zone lists the address (confirmed)",
                            ["pool", "address", "zone"], registry=registry)
        self.zone_usable = Gauge("smtpinfra_operator_dnsbl_zone_usable", "1 when the zone passes its self-test",
                                 ["pool", "zone"], registry=registry)
        self.duration = Histogram("smtpinfra_operator_dnsbl_check_duration_seconds",
                                  "Duration of one check of every pool address in every zone", ["pool"],
                                  registry=registry, buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120))
        self.listings = Counter("smtpinfra_operator_dnsbl_listings", "Listings confirmed",
                                ["pool", "address", "zone"], registry=registry)

    def record(self, config: PoolConfig, prev: PoolView, view: PoolView, seconds: float) -> None:
        self.duration.labels(config.name).observe(seconds)
        for zone, health in view.zones.items():
            self.zone_usable.labels(config.name, zone).set(1 if health.test.usable else 0)
        for address, row in view.states.items():
            for zone, state in row.items():
                self.listed.labels(config.name, address, zone).set(1 if state.state.listed else 0)
                was = prev.states.get(address, {}).get(zone)
                if state.state.listed and not (was and was.state.listed):
                    self.listings.labels(config.name, address, zone).inc()

    def forget(self, config: PoolConfig) -> None:
        for zone in config.zones:
            _remove(self.zone_usable, config.name, zone)
            for address in config.addresses:
                _remove(self.listed, config.name, address, zone)
                _remove(self.listings, config.name, address, zone)
        _remove(self.duration, config.name)


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
    """Queries in flight at once (per check); more only filled the socket's receive buffer."""
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
        """Every name looked up, at most `concurrency` at a time: that many workers taking the next name,
        rather than a task per name waiting on a semaphore (5,000 tasks per check)."""
        found: list[Lookup] = [Lookup(AnswerKind.FAILURE, detail="not asked")] * len(names)
        todo = iter(enumerate(names))

        async def worker() -> None:
            for i, name in todo:
                found[i] = await resolver.lookup(name)

        await asyncio.gather(*(worker() for _ in range(min(self._concurrency, len(names)))))
        return found

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
