"""DNS blocklists, pure: query names, answer classification, RFC 5782 self-tests, hysteresis.

No I/O here. The monitor (`dnsbl_monitor`) asks DNS and feeds the answers in as `Lookup`s;
everything that decides what an answer means lives here so it is tested table-driven.

Why so careful: reading an error code (Spamhaus 127.255.255.254 "public resolver") or a broken
zone as a listing is the most-reported bug of blocklist tools, and a timeout read as "clean"
releases addresses that are still listed. So an answer is *listed* only inside 127.0.0.2-254
minus the zone's documented error codes, a zone is used only while it passes RFC 5782 §5, and
an address moves only after N confirmations (listing) or `releaseAfter` without one (release).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

SPAMHAUS_ERRORS = frozenset({"127.255.255.252", "127.255.255.254", "127.255.255.255"})
"""Spamhaus: typo in the zone name, query through a public/open resolver, over the free quota."""

KNOWN_ERROR_CODES: Mapping[str, frozenset[str]] = {
    "spamhaus.org": SPAMHAUS_ERRORS,
    "spamhaus.net": SPAMHAUS_ERRORS,  # DQS: <key>.zen.dq.spamhaus.net
    "abuseat.org": SPAMHAUS_ERRORS,  # CBL, served by Spamhaus
    "spamcop.net": frozenset({"127.0.0.1"}),
    "barracudacentral.org": frozenset({"127.0.0.1"}),
    "mailspike.net": frozenset({"127.0.0.1"}),
}
"""Documented error answers of well-known zones, by the zone's registered domain (suffix match)."""

IPV4_TEST_LISTED, IPV4_TEST_CLEAN = "127.0.0.2", "127.0.0.1"
IPV6_TEST_LISTED, IPV6_TEST_CLEAN = "::ffff:7f00:2", "::ffff:7f00:1"
"""RFC 5782 §5 test points: a list must list the first and must not list the second."""


def query_name(address: str, zone: str, key: str | None = None) -> str:
    """The name to ask for `address` in `zone` (absolute, trailing dot).

    IPv4 octets reversed, IPv6 as 32 reversed nibbles (RFC 5782 §2.4); a query key goes in front
    of the zone (Spamhaus DQS: `<reversed>.<key>.zen.dq.spamhaus.net`).
    """
    reversed_part = _reversed(address)
    zone = zone.rstrip(".")
    return f"{reversed_part}.{key}.{zone}." if key else f"{reversed_part}.{zone}."


@functools.lru_cache(maxsize=65536)
def _reversed(address: str) -> str:
    """An address's reversed octets or nibbles: the same for every zone, so parsed once per check, not per zone."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return ".".join(reversed(str(ip).split(".")))
    return ".".join(reversed(ip.exploded.replace(":", "")))


def error_codes(zone: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The zone's documented error answers: the known ones for its operator plus `extra` from the spec."""
    zone = zone.rstrip(".").lower()
    known = next((codes for suffix, codes in KNOWN_ERROR_CODES.items()
                  if zone == suffix or zone.endswith("." + suffix)), frozenset())
    return known | frozenset(str(ipaddress.ip_address(c)) for c in extra)


class AnswerKind(StrEnum):
    """What DNS said, before it means anything."""

    ADDRESSES = "addresses"
    """NOERROR with A records."""
    NXDOMAIN = "nxdomain"
    """The name does not exist: not listed."""
    NODATA = "nodata"
    """The name exists but has no A record: not listed."""
    FAILURE = "failure"
    """Timeout, SERVFAIL, REFUSED, a network error: nothing known."""


@dataclass(frozen=True)
class Lookup:
    """One DNS answer as the monitor saw it."""

    kind: AnswerKind
    addresses: tuple[str, ...] = ()
    detail: str = ""
    """For a failure: what failed (timeout, SERVFAIL, REFUSED, ...)."""


class Result(StrEnum):
    """What one answer means."""

    LISTED = "Listed"
    NOT_LISTED = "NotListed"
    ERROR = "Error"
    """The zone answered one of its error codes, or something outside 127/8: never a listing."""
    UNKNOWN = "Unknown"
    """No usable answer (timeout, SERVFAIL, REFUSED)."""
    UNUSABLE = "Unusable"
    """The zone failed its self-test; its answers are ignored."""


@dataclass(frozen=True)
class Classified:
    result: Result
    code: str | None = None
    """The returned address that decided it (the listing's return code or the error code)."""
    detail: str = ""


_LOOPBACK = int(ipaddress.IPv4Address("127.0.0.0"))


@functools.lru_cache(maxsize=4096)
def _code(address: str) -> tuple[str, tuple[int, int], bool]:
    """A returned address: its canonical text, its sort key, and whether it is in 127.0.0.2 to 127.0.0.254,
    the only answers that can mean "listed" (RFC 5782 §2.1). Zones answer a handful of codes, so each
    is parsed once, not for every one of thousands of answers."""
    ip = ipaddress.ip_address(address)
    return str(ip), (ip.version, int(ip)), ip.version == 4 and 2 <= int(ip) - _LOOPBACK <= 254


def classify(lookup: Lookup, errors: frozenset[str] = frozenset()) -> Classified:
    """Listed (127.0.0.2-254 minus the zone's error codes), error, not listed, or unknown.

    With several A records, any error code makes the whole answer an error: a resolver the list
    refuses may still return stale data beside the error, and that is not a confirmation.
    """
    if lookup.kind in (AnswerKind.NXDOMAIN, AnswerKind.NODATA):
        return Classified(Result.NOT_LISTED)
    if lookup.kind is AnswerKind.FAILURE or not lookup.addresses:
        return Classified(Result.UNKNOWN, detail=lookup.detail or "no answer")
    codes = sorted({_code(a) for a in lookup.addresses}, key=lambda c: c[1])
    for code, _, _ in codes:
        if code in errors:
            return Classified(Result.ERROR, code, f"the zone answered its error code {code}")
    for code, _, listing in codes:
        if not listing:
            return Classified(Result.ERROR, code, f"{code} is outside 127.0.0.2-127.0.0.254, not a listing")
    return Classified(Result.LISTED, codes[0][0])


@dataclass(frozen=True)
class SelfTest:
    """RFC 5782 §5 verdict on one zone."""

    usable: bool | None
    """True: passes; False: fails (never use it); None: could not tell (test points did not answer)."""
    reason: str
    message: str


def self_test(listed_point: Classified, clean_point: Classified,
              v6_listed: Classified | None = None, v6_clean: Classified | None = None) -> SelfTest:
    """Does the zone list its listed test point and not its clean one (and the IPv6 ones if asked)?"""
    checks = [("127.0.0.2", listed_point, True), ("127.0.0.1", clean_point, False)]
    if v6_listed is not None and v6_clean is not None:
        checks += [("::FFFF:7F00:2", v6_listed, True), ("::FFFF:7F00:1", v6_clean, False)]
    for point, got, _ in checks:
        if got.result is Result.UNKNOWN:
            return SelfTest(None, "SelfTestNoAnswer", f"test point {point}: {got.detail}")
    for point, got, want_listed in checks:
        if got.result is Result.ERROR:
            return SelfTest(False, "SelfTestError", f"test point {point} answered the error {got.code} ({got.detail})")
        if want_listed and got.result is not Result.LISTED:
            return SelfTest(False, "SelfTestFailed", f"test point {point} is not listed (RFC 5782 §5 requires it)")
        if not want_listed and got.result is Result.LISTED:
            return SelfTest(False, "SelfTestFailed",
                            f"test point {point} is listed ({got.code}): the zone lists everything")
    return SelfTest(True, "SelfTestPassed", "RFC 5782 test points answer as required")


class State(StrEnum):
    """The decided state of one address in one zone (what moves traffic)."""

    UNKNOWN = "Unknown"
    """No trustworthy answer yet: neither clean nor listed."""
    CLEAN = "Clean"
    PENDING = "Pending"
    """Listed, not yet confirmed enough times."""
    LISTED = "Listed"
    RELEASING = "Releasing"
    """The listing is gone; released once it has been gone for releaseAfter."""

    @property
    def listed(self) -> bool:
        """Counts as a listing for quarantine (confirmed and not yet released)."""
        return self in (State.LISTED, State.RELEASING)


@dataclass(frozen=True)
class ZoneState:
    """Hysteresis state of one (address, zone)."""

    state: State = State.UNKNOWN
    since: datetime | None = None
    """When `state` was entered."""
    code: str | None = None
    """The listing's return code (kept while Listed/Releasing), or the last error code."""
    streak: int = 0
    """Consecutive listed answers (for Pending)."""
    result: Result | None = None
    """The last answer's meaning."""
    detail: str = ""
    checked: datetime | None = None


def step(prev: ZoneState, seen: Classified, now: datetime, confirmations: int,
         release_after: timedelta) -> ZoneState:
    """Next hysteresis state after one classified answer (pure).

    Listed only after `confirmations` listed answers in a row; released only when a not-listed
    answer comes at least `release_after` after the listing was first seen gone. Errors, unknown
    answers and unusable zones move nothing (and never make an address clean), nor do they
    break or extend a streak.
    """
    # One new ZoneState per (address, zone) and check, built directly: `dataclasses.replace` twice
    # per pair was a tenth of a 5,000-pair check.
    state, since, code, streak = prev.state, prev.since, prev.code, prev.streak
    if seen.result is Result.LISTED:
        code, streak = seen.code, prev.streak + 1
        if prev.state is State.RELEASING:  # came back before release: still the same listing
            state, since = State.LISTED, prev.since if prev.since else now
        elif prev.state is not State.LISTED:
            if streak >= confirmations:
                state, since = State.LISTED, now
            else:
                state, since = State.PENDING, prev.since if prev.state is State.PENDING else now
    elif seen.result is Result.NOT_LISTED:
        streak = 0
        if prev.state is State.LISTED:
            state, since = State.RELEASING, now
        elif prev.state is State.RELEASING:
            assert prev.since is not None
            if now - prev.since >= release_after:
                state, since, code = State.CLEAN, now, None
        elif prev.state is not State.CLEAN:
            state, since, code = State.CLEAN, now, None
    elif seen.result is Result.ERROR:
        code = prev.code if prev.state.listed else seen.code
    return ZoneState(state=state, since=since, code=code, streak=streak, result=seen.result, detail=seen.detail,
                     checked=now)


@dataclass(frozen=True)
class Quarantine:
    """The quarantine decision for one address."""

    quarantined: bool
    zones: tuple[str, ...]
    """Zones (of those the policy acts on) that list it."""


def quarantine(states: Mapping[str, ZoneState], act_on: Iterable[str], enabled: bool,
               min_listings: int) -> Quarantine:
    """Quarantined when at least `min_listings` of the zones the policy acts on list the address."""
    act = set(act_on)
    zones = tuple(sorted(z for z, s in states.items() if z in act and s.state.listed))
    return Quarantine(enabled and len(zones) >= min_listings, zones)
