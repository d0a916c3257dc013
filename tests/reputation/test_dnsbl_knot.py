"""The blocklist monitor against a real Knot server, on an injected clock.

Knot serves the test zones of `dnsbl_knot`; a bound UDP socket that never answers stands for a
list that times out. The monitor is the operator's (`DnsblMonitor`, dnspython's async queries)
with a test clock and a Prometheus registry of its own; only the Kubernetes side (Secret read,
Event post, IpPool queue) is replaced by plain callables that record what they get.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from smtpinfra_api.meta import SecretKeyReference
from smtpinfra_api.v1alpha1 import IpPoolSpec
from smtpinfra_operator.reputation.dnsbl import AnswerKind, Lookup, Result, State, classify, error_codes, query_name
from smtpinfra_operator.reputation.dnsbl_monitor import DnsblMetrics, DnsblMonitor
from smtpinfra_operator.reputation.dnsbl_resolver import DnsResolver
from smtpinfra_operator.reputation.dnsbl_status import Event, address_fields, zone_fields
from tests.reputation.dnsbl_knot import (
    CLEAN,
    DELEGATED,
    ERRORS,
    EVERYTHING,
    GOOD,
    KEYED,
    QUERY_KEY,
    DnsblKnot,
    SilentUdp,
    make_knot,
)

pytestmark = [pytest.mark.dns]

LISTED_A, LISTED_B, CLEAN_ADDR = "127.0.20.11", "127.0.20.12", "127.0.20.13"
TIMEOUT_ZONE = "timeout.test"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsblKnot]:
    server = make_knot(tmp_path_factory.mktemp("dnsbl-knot"), {LISTED_A: "127.0.0.2", LISTED_B: "127.0.0.4"})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def silent() -> Iterator[SilentUdp]:
    sock = SilentUdp()
    try:
        yield sock
    finally:
        sock.close()


def ask(server: str, name: str, timeout: float = 2.0) -> Lookup:
    async def one() -> Lookup:
        resolver = DnsResolver(server, timeout)
        try:
            return await resolver.lookup(name)
        finally:
            resolver.close()

    return asyncio.run(one())


@pytest.mark.parametrize(("address", "zone", "key", "result", "code"), [
    (LISTED_A, GOOD, None, Result.LISTED, "127.0.0.2"),
    (LISTED_B, GOOD, None, Result.LISTED, "127.0.0.4"),
    (CLEAN_ADDR, GOOD, None, Result.NOT_LISTED, None),
    ("127.0.0.2", GOOD, None, Result.LISTED, "127.0.0.2"),
    ("127.0.0.1", GOOD, None, Result.NOT_LISTED, None),
    ("::ffff:7f00:2", GOOD, None, Result.LISTED, "127.0.0.2"),
    (LISTED_A, CLEAN, None, Result.NOT_LISTED, None),
    (LISTED_A, ERRORS, None, Result.ERROR, "127.255.255.254"),
    (CLEAN_ADDR, EVERYTHING, None, Result.LISTED, "127.0.0.2"),
    ("127.0.0.1", EVERYTHING, None, Result.LISTED, "127.0.0.2"),
    (LISTED_A, KEYED, QUERY_KEY, Result.LISTED, "127.0.0.2"),
    (LISTED_A, KEYED, None, Result.NOT_LISTED, None),  # without the key the name does not exist
    (LISTED_A, f"sub.{DELEGATED}", None, Result.UNKNOWN, None),  # a referral is no answer
])
def test_classification_of_knot_answers(knot: DnsblKnot, address: str, zone: str, key: str | None,
                                        result: Result, code: str | None) -> None:
    got = classify(ask(knot.nameserver, query_name(address, zone, key)), error_codes(zone))
    assert (got.result, got.code) == (result, code)


def test_a_batch_answers_each_name_in_order_with_few_queries_in_flight(knot: DnsblKnot, silent: SilentUdp) -> None:
    """`lookup_many` sends the next query from each answer's callback: with 3 in flight, 39 names still come back
    each with its own answer, in order; a resolver that never answers makes every one a timeout, after its retry."""
    names = [query_name(a, z) for a in (LISTED_A, LISTED_B, CLEAN_ADDR) for z in (GOOD, CLEAN, ERRORS, EVERYTHING)]
    names = names * 3 + [query_name(LISTED_A, KEYED, QUERY_KEY)] * 3

    async def batch(server: str, wanted: list[str], wait: float) -> list[Lookup]:
        resolver = DnsResolver(server, wait)
        try:
            return await resolver.lookup_many(wanted, 3)
        finally:
            resolver.close()

    found = asyncio.run(batch(knot.nameserver, names, 2.0))
    assert found == [ask(knot.nameserver, n) for n in names]
    zones = (GOOD, CLEAN, ERRORS, EVERYTHING)
    assert [classify(f, error_codes(z)).result for f, z in zip(found[:4], zones, strict=True)] == [
        Result.LISTED, Result.NOT_LISTED, Result.ERROR, Result.LISTED]
    lost = asyncio.run(batch(silent.address, names[:5], 0.2))
    assert [(f.kind, f.detail) for f in lost] == [(AnswerKind.FAILURE, "timeout after 0.2s")] * 5


def test_a_resolver_that_never_answers_is_unknown(silent: SilentUdp) -> None:
    lookup = ask(silent.address, query_name(LISTED_A, GOOD), timeout=0.3)
    assert lookup.kind is AnswerKind.FAILURE and "timeout" in lookup.detail
    assert classify(lookup).result is Result.UNKNOWN


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Routed:
    """The pool's resolver is Knot; names under the timeout zone go to the silent socket instead."""

    def __init__(self, knot: DnsblKnot, silent: SilentUdp, timeout: float) -> None:
        self.knot, self.silent = DnsResolver(knot.nameserver, timeout), DnsResolver(silent.address, timeout)

    async def lookup(self, name: str) -> Lookup:
        return await (self.silent if name.endswith(f".{TIMEOUT_ZONE}.") else self.knot).lookup(name)

    async def lookup_many(self, names: Sequence[str], concurrency: int) -> list[Lookup]:
        """Each part through its resolver's own batch path (the silent one times every query out)."""
        silent = [i for i, n in enumerate(names) if n.endswith(f".{TIMEOUT_ZONE}.")]
        rest = [i for i in range(len(names)) if i not in set(silent)]
        lost, answered = await asyncio.gather(self.silent.lookup_many([names[i] for i in silent], concurrency),
                                              self.knot.lookup_many([names[i] for i in rest], concurrency))
        found = dict(zip(silent, lost, strict=True)) | dict(zip(rest, answered, strict=True))
        return [found[i] for i in range(len(names))]

    def close(self) -> None:
        self.knot.close()
        self.silent.close()


def pool_spec(dnsbl_zones: list[str], **quarantine: object) -> IpPoolSpec:
    return IpPoolSpec.model_validate({
        "addresses": [LISTED_A, LISTED_B, CLEAN_ADDR],
        "dnsbl": {"zones": dnsbl_zones, "checkInterval": "1h", "confirmations": 2, "queryTimeout": "300ms",
                  "zoneSettings": [{"zone": KEYED, "keySecretRef": {"name": "dqs", "key": "key"}}]},
        "quarantine": {"releaseAfter": "2h", **quarantine}})


class Harness:
    def __init__(self, knot: DnsblKnot, silent: SilentUdp, key: str | None = QUERY_KEY) -> None:
        self.clock = Clock(T0)
        self.kicked: list[str] = []
        self.events: list[Event] = []
        self.registry = CollectorRegistry()
        self.secrets: list[SecretKeyReference] = []

        async def read_secret(ref: SecretKeyReference) -> str | None:
            self.secrets.append(ref)
            return key

        self.monitor = DnsblMonitor(
            clock=self.clock, on_change=self.kicked.append, metrics=DnsblMetrics(self.registry),
            resolver_factory=lambda _ns, timeout: Routed(knot, silent, timeout), read_secret=read_secret,
            post_event=lambda _pool, event: self.events.append(event))

    def check(self, at: timedelta) -> None:
        self.clock.now = T0 + at
        asyncio.run(self.monitor.check("p"))

    def state(self, address: str, zone: str) -> State:
        view = self.monitor.view("p")
        assert view is not None
        return view[1].states[address][zone].state

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, {"pool": "p", **labels})


def test_listing_confirmed_quarantined_then_released_on_the_clock(knot: DnsblKnot, silent: SilentUdp) -> None:
    h = Harness(knot, silent)
    zones = [GOOD, CLEAN, ERRORS, EVERYTHING, KEYED, TIMEOUT_ZONE]
    h.monitor.configure("p", pool_spec(zones, zones=[GOOD, KEYED, ERRORS, EVERYTHING, TIMEOUT_ZONE]))
    h.check(timedelta(0))
    assert h.secrets == [SecretKeyReference(name="dqs", key="key")]
    assert h.state(LISTED_A, GOOD) is State.PENDING  # one answer is not a confirmation
    assert not h.monitor.quarantined("p", LISTED_A)
    assert h.kicked == ["p"]
    config, view = h.monitor.view("p")  # type: ignore[misc]
    health = {z["zone"]: (z.get("usable"), z["reason"]) for z in zone_fields(view)}
    assert health == {GOOD: (True, "SelfTestPassed"), CLEAN: (True, "SelfTestPassed"),
                      KEYED: (True, "SelfTestPassed"), ERRORS: (False, "SelfTestError"),
                      EVERYTHING: (False, "SelfTestFailed"), TIMEOUT_ZONE: (None, "SelfTestNoAnswer")}
    assert h.metric("smtpinfra_operator_dnsbl_zone_usable", zone=EVERYTHING) == 0
    assert h.metric("smtpinfra_operator_dnsbl_zone_usable", zone=GOOD) == 1

    h.check(timedelta(hours=1))
    assert h.state(LISTED_A, GOOD) is State.LISTED and h.state(LISTED_A, KEYED) is State.LISTED
    assert h.monitor.quarantined("p", LISTED_A) and h.monitor.quarantined("p", LISTED_B)
    for zone in (ERRORS, EVERYTHING, TIMEOUT_ZONE):  # never listed, never clean
        assert h.state(CLEAN_ADDR, zone) is State.UNKNOWN
    assert not h.monitor.quarantined("p", CLEAN_ADDR)
    current = h.monitor.view("p")
    assert current is not None
    entry = {b["zone"]: b for b in address_fields(config, current[1], LISTED_B)["blocklists"]}
    assert entry[GOOD]["code"] == "127.0.0.4" and entry[GOOD]["since"] == "2026-03-01T13:00:00Z"
    assert entry[ERRORS]["result"] == "Unusable" and entry[TIMEOUT_ZONE]["result"] == "Unknown"
    assert ("Quarantined", f"{LISTED_A} stops sending: listed in {GOOD}, {KEYED}") in [
        (e.reason, e.message) for e in h.events]
    assert h.metric("smtpinfra_operator_dnsbl_listed", address=LISTED_A, zone=GOOD) == 1
    assert h.metric("smtpinfra_operator_dnsbl_listings_total", address=LISTED_A, zone=GOOD) == 1
    assert h.metric("smtpinfra_operator_dnsbl_listed", address=CLEAN_ADDR, zone=EVERYTHING) == 0
    assert (h.metric("smtpinfra_operator_dnsbl_check_duration_seconds_count") or 0) == 2

    knot.delist_address(LISTED_A)
    knot.delist_address(LISTED_A, KEYED, QUERY_KEY)
    h.events.clear()
    try:
        h.check(timedelta(hours=2))
        assert h.state(LISTED_A, GOOD) is State.RELEASING
        assert h.monitor.quarantined("p", LISTED_A)  # gone, but not for releaseAfter yet
        assert sorted(e.reason for e in h.events) == ["Delisted", "Delisted"]
        h.check(timedelta(hours=3, minutes=59))
        assert h.monitor.quarantined("p", LISTED_A)
        h.check(timedelta(hours=4))
        assert h.state(LISTED_A, GOOD) is State.CLEAN and not h.monitor.quarantined("p", LISTED_A)
        assert "QuarantineReleased" in [e.reason for e in h.events]
        assert h.monitor.quarantined("p", LISTED_B)  # still listed
        assert h.metric("smtpinfra_operator_dnsbl_listed", address=LISTED_A, zone=GOOD) == 0
    finally:
        knot.list_address(LISTED_A)
        knot.list_address(LISTED_A, zone=KEYED, key=QUERY_KEY)  # as it was, for the other tests


def test_keyed_zone_without_its_key_is_unusable(knot: DnsblKnot, silent: SilentUdp) -> None:
    h = Harness(knot, silent, key=None)
    h.monitor.configure("p", pool_spec([GOOD, KEYED]))
    h.check(timedelta(0))
    h.check(timedelta(hours=1))
    _, view = h.monitor.view("p")  # type: ignore[misc]
    assert view.zones[KEYED].test.reason == "QueryKeyMissing" and view.zones[KEYED].test.usable is False
    assert h.state(LISTED_A, KEYED) is State.UNKNOWN and h.state(LISTED_A, GOOD) is State.LISTED


def test_the_loop_checks_each_pool_on_its_interval(knot: DnsblKnot, silent: SilentUdp) -> None:
    h = Harness(knot, silent)
    h.monitor.configure("p", pool_spec([GOOD]))
    assert h.monitor.due(T0) == ["p"]
    h.check(timedelta(0))
    assert h.monitor.due(T0 + timedelta(minutes=59)) == []
    assert h.monitor.due(T0 + timedelta(hours=1)) == ["p"]

    async def loop_until_checked() -> int:
        h.monitor.TICK = 0.05
        h.clock.now = T0 + timedelta(hours=1)
        h.monitor.start()
        try:
            for _ in range(400):
                if len(h.kicked) >= 2:
                    break
                await asyncio.sleep(0.05)
            return len(h.kicked)
        finally:
            await h.monitor.stop()

    assert asyncio.run(loop_until_checked()) == 2  # one more check, not one per tick


def test_an_ipv6_pool_self_tests_the_ipv6_points(knot: DnsblKnot, silent: SilentUdp, tmp_path: Path) -> None:
    h = Harness(knot, silent)
    h.monitor.configure("p", IpPoolSpec.model_validate({
        "addresses": ["2001:db8::25"], "dnsbl": {"zones": [GOOD, EVERYTHING], "confirmations": 1}}))
    h.check(timedelta(0))
    _, view = h.monitor.view("p")  # type: ignore[misc]
    assert view.zones[GOOD].test.usable is True
    assert view.zones[EVERYTHING].test.usable is False
    assert h.state("2001:db8::25", GOOD) is State.CLEAN
