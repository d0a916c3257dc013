"""End to end: the operator watches an IpPool's addresses in DNS blocklists served by a real Knot server.

The operator runs as a process with the chart's RBAC and a test clock (a file it reads the time
from, `SMTP_INFRA_FAKE_TIME_FILE`), so `checkInterval` and `releaseAfter` pass in seconds. Knot
serves the zones of `tests/reputation/dnsbl_knot.py`: a good list that lists one pool address, a
clean list, one answering the error 127.255.255.254 for everything, one listing everything (it
fails its RFC 5782 self-test), a keyed list whose key comes from a Secret, and a delegated zone
nobody answers for. The tests of this module run in order and share the pool.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.kube import OPERATOR_NAMESPACE, OperatorProcess, apply, condition, crds, get, operator_kubeconfig, wait_for
from tests.reputation.dnsbl_knot import (
    CLEAN,
    DELEGATED,
    ERRORS,
    EVERYTHING,
    GOOD,
    KEYED,
    QUERY_KEY,
    DnsblKnot,
    make_knot,
)

pytestmark = [pytest.mark.dns, pytest.mark.e2e, pytest.mark.operator]

__all__ = ["crds"]  # the session's control plane with the CRDs (a fixture of tests.kube)

POOL = "dnsbl-pool"
LISTED, CLEAN_ADDR = "127.0.20.21", "127.0.20.22"
SILENT_ZONE = f"sub.{DELEGATED}"
ZONES = [GOOD, CLEAN, ERRORS, EVERYTHING, KEYED, SILENT_ZONE]
T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def knot() -> Iterator[DnsblKnot]:
    with tempfile.TemporaryDirectory() as d:
        server = make_knot(Path(d), {LISTED: "127.0.0.3"})
        try:
            yield server
        finally:
            server.stop()


class TestClock:
    """The time the operator reads (a file), moved by the tests."""

    __test__ = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set(T0)

    def set(self, when: datetime) -> None:
        self.path.write_text(when.isoformat())

    def advance(self, by: timedelta) -> None:
        self.set(datetime.fromisoformat(self.path.read_text()) + by)


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> TestClock:
    return TestClock(tmp_path_factory.mktemp("dnsbl-clock") / "now")


@pytest.fixture(scope="module")
def operator_proc(crds: Any, clock: TestClock, knot: DnsblKnot,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """An operator on the test clock with the chart's RBAC, and the keyed zone's Secret."""
    directory = tmp_path_factory.mktemp("dnsbl-operator")
    proc = OperatorProcess(crds, directory / "operator.log",
                           env={"SMTP_INFRA_FAKE_TIME_FILE": str(clock.path),
                                "SMTP_INFRA_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE},
                           kubeconfig=operator_kubeconfig(crds, directory / "kubeconfig"))
    crds.kubectl("-n", OPERATOR_NAMESPACE, "create", "secret", "generic", "dqs-key",
                 f"--from-literal=key={QUERY_KEY}", check=False)
    proc.start()
    try:
        yield proc
    finally:
        crds.kubectl("delete", "ippool", POOL, "--wait=false", check=False)
        proc.stop()
        if proc.process and proc.process.returncode not in (0, -15):
            print(proc.log()[-5000:])


@pytest.fixture(scope="module")
def cp(operator_proc: OperatorProcess) -> Any:
    """The control plane the operator works on."""
    return operator_proc.cp


def pool_manifest(resolver: str, **quarantine: Any) -> dict[str, Any]:
    return {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": POOL},
            "spec": {"addresses": [LISTED, CLEAN_ADDR], "ptrTemplate": "mta-{index}.dnsbl.example.test",
                     "dnsbl": {"zones": ZONES, "resolver": resolver, "checkInterval": "1h", "confirmations": 2,
                               "queryTimeout": "500ms",
                               "zoneSettings": [{"zone": KEYED, "keySecretRef": {"name": "dqs-key", "key": "key"}}]},
                     "quarantine": {"releaseAfter": "2h", **quarantine}}}


def pool_when(cp: Any, predicate: Callable[[dict[str, Any]], Any], what: str) -> dict[str, Any]:
    """The pool once `predicate` holds for it (polled)."""

    def ready() -> dict[str, Any] | None:
        pool = get(cp, "ippool", POOL)
        return pool if predicate(pool) else None

    found: dict[str, Any] = wait_for(ready, timeout=90, what=what)
    return found


def address(pool: dict[str, Any], ip: str) -> dict[str, Any]:
    return next((a for a in (pool.get("status") or {}).get("addresses", []) if a["address"] == ip), {})


def zones(pool: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {z["zone"]: z for z in (pool.get("status") or {}).get("blocklistZones", [])}


def blocklist(pool: dict[str, Any], ip: str) -> dict[str, dict[str, Any]]:
    return {b["zone"]: b for b in address(pool, ip).get("blocklists", [])}


def events(cp: Any) -> list[tuple[str, str]]:
    found = json.loads(cp.kubectl("-n", "default", "get", "events", "--field-selector",
                                  f"involvedObject.name={POOL}", "-o", "json").stdout)
    return [(e["reason"], e["message"]) for e in found["items"]]


def test_the_api_refuses_inconsistent_blocklist_settings(cp: Any, knot: DnsblKnot) -> None:
    bad_zone = pool_manifest(knot.nameserver, zones=["other.test"])
    refused = apply(cp, bad_zone, check=False)
    assert refused.returncode != 0
    assert "spec.quarantine.zones: each zone must be listed in spec.dnsbl.zones" in refused.stderr
    bad_resolver = pool_manifest("resolver.example.test:53")
    refused = apply(cp, bad_resolver, check=False)
    assert "spec.dnsbl.resolver must be an IP address, address:port or [IPv6]:port" in refused.stderr
    bad_settings = pool_manifest(knot.nameserver)
    bad_settings["spec"]["dnsbl"]["zoneSettings"][0]["zone"] = "unlisted.test"
    refused = apply(cp, bad_settings, check=False)
    assert "spec.dnsbl.zoneSettings: each zone must be listed in spec.dnsbl.zones" in refused.stderr


def test_a_listing_is_confirmed_then_quarantines(cp: Any, knot: DnsblKnot, clock: TestClock) -> None:
    apply(cp, pool_manifest(knot.nameserver))
    first = pool_when(cp, lambda p: blocklist(p, LISTED), "the first blocklist check in the pool's status")
    # one answer is not a confirmation
    assert blocklist(first, LISTED)[GOOD]["state"] == "Pending"
    assert address(first, LISTED)["quarantined"] is False

    clock.advance(timedelta(hours=1))
    pool = pool_when(cp, lambda p: address(p, LISTED).get("quarantined"), "the listed address quarantined")
    entry = address(pool, LISTED)
    assert entry["listings"] == [GOOD, KEYED]
    assert entry["state"] == "Quarantined"  # in the same write as the decision
    assert address(pool, CLEAN_ADDR)["state"] == "Warm"
    assert blocklist(pool, LISTED)[GOOD] | {"since": None} == {
        "zone": GOOD, "state": "Listed", "code": "127.0.0.3", "result": "Listed", "since": None}
    assert blocklist(pool, LISTED)[GOOD]["since"] == "2026-04-01T10:00:00Z"
    assert entry["lastCheck"] == "2026-04-01T10:00:00Z"
    degraded = condition(pool, "Degraded")
    assert degraded is not None and degraded["status"] == "True" and degraded["reason"] == "AddressesQuarantined"
    assert f"{LISTED} (listed in {GOOD}, {KEYED})" in degraded["message"]
    reasons = wait_for(lambda: {r for r, _ in events(cp)} >= {"Listed", "Quarantined"} and events(cp), timeout=60,
                       what="Listed and Quarantined Events")
    assert ("Quarantined", f"{LISTED} stops sending: listed in {GOOD}, {KEYED}") in reasons


def test_error_and_broken_zones_never_quarantine_and_are_reported(cp: Any) -> None:
    pool = get(cp, "ippool", POOL)
    health = zones(pool)
    assert (health[ERRORS]["usable"], health[ERRORS]["reason"]) == (False, "SelfTestError")
    assert "127.255.255.254" in health[ERRORS]["message"]
    assert (health[EVERYTHING]["usable"], health[EVERYTHING]["reason"]) == (False, "SelfTestFailed")
    assert "lists everything" in health[EVERYTHING]["message"]
    assert "usable" not in health[SILENT_ZONE] and health[SILENT_ZONE]["reason"] == "SelfTestNoAnswer"
    assert all(health[z]["usable"] is True for z in (GOOD, CLEAN, KEYED))
    clean = address(pool, CLEAN_ADDR)
    assert clean["quarantined"] is False and clean["listings"] == []
    states = {z: (b["state"], b.get("result")) for z, b in blocklist(pool, CLEAN_ADDR).items()}
    assert states == {GOOD: ("Clean", "NotListed"), CLEAN: ("Clean", "NotListed"), KEYED: ("Clean", "NotListed"),
                      ERRORS: ("Unknown", "Unusable"), EVERYTHING: ("Unknown", "Unusable"),
                      SILENT_ZONE: ("Unknown", "Unknown")}
    assert "BlocklistZoneUnusable" in {r for r, _ in events(cp)}


def test_an_operator_restart_keeps_confirmed_listings(cp: Any, clock: TestClock,
                                                      operator_proc: OperatorProcess) -> None:
    before = get(cp, "ippool", POOL)
    quarantined_events = [e for e in events(cp) if e[0] == "Quarantined"]
    operator_proc.stop()
    operator_proc.start()
    clock.advance(timedelta(hours=1))
    pool = pool_when(cp, lambda p: address(p, LISTED).get("lastCheck") == "2026-04-01T11:00:00Z",
                     "a check by the restarted operator")
    # still the same listing since the same time, still quarantined: nothing was forgotten
    assert blocklist(pool, LISTED)[GOOD]["since"] == blocklist(before, LISTED)[GOOD]["since"]
    assert address(pool, LISTED)["quarantined"] is True
    assert [e for e in events(cp) if e[0] == "Quarantined"] == quarantined_events


def test_delisted_address_is_released_after_release_after(cp: Any, knot: DnsblKnot, clock: TestClock) -> None:
    knot.delist_address(LISTED)
    knot.delist_address(LISTED, KEYED, QUERY_KEY)
    clock.advance(timedelta(hours=1))
    pool = pool_when(cp, lambda p: blocklist(p, LISTED)[GOOD]["state"] == "Releasing", "the listing seen gone")
    assert address(pool, LISTED)["quarantined"] is True  # gone for less than releaseAfter
    assert (condition(pool, "Degraded") or {}).get("status") == "True"

    clock.advance(timedelta(hours=2))
    pool = pool_when(cp, lambda p: not address(p, LISTED).get("quarantined"), "the address released")
    assert blocklist(pool, LISTED)[GOOD]["state"] == "Clean" and address(pool, LISTED)["listings"] == []
    assert address(pool, LISTED)["state"] == "Warm"
    degraded = condition(pool, "Degraded")
    assert degraded is not None and degraded["status"] == "False"
    wait_for(lambda: {"Delisted", "QuarantineReleased"} <= {r for r, _ in events(cp)}, timeout=60,
             what="Delisted and QuarantineReleased Events")
