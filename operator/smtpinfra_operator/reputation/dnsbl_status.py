"""A pool's blocklist picture, pure: what to check, how one check moves it, what status and Events say.

The monitor (`dnsbl_monitor`) does the DNS and keeps a `PoolView` per pool; the IpPool controller
(the only writer of IpPool status) turns the view into status fields and the `Degraded` condition
with `address_fields`, `zone_fields` and `degraded`. Everything here is a function of its inputs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from smtpinfra_api.meta import SecretKeyReference, parse_duration
from smtpinfra_api.v1alpha1 import IpPoolSpec

from ..builders.assignment import expand_addresses
from .dnsbl import Classified, Quarantine, Result, SelfTest, State, ZoneState, error_codes, quarantine, step

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@functools.lru_cache(maxsize=4096)
def stamp(when: datetime | None) -> str | None:
    """metav1.Time's wire form (second precision, Z); memoised: a pool's 5,000 (address, zone) states share a
    handful of times (each check's), and formatting each was a fifth of building the status."""
    return when.strftime(TIME_FORMAT) if when is not None else None


def parse_stamp(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


@dataclass(frozen=True)
class PoolConfig:
    """What the monitor needs of one IpPool's spec."""

    name: str
    addresses: tuple[str, ...]
    zones: tuple[str, ...]
    interval: timedelta
    resolver: str | None
    timeout: float
    confirmations: int
    release_after: timedelta
    act_on: tuple[str, ...]
    """Zones whose listings quarantine."""
    quarantine_enabled: bool
    min_listings: int
    keys: Mapping[str, SecretKeyReference] = field(default_factory=dict)
    errors: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def has_ipv6(self) -> bool:
        return any(":" in a for a in self.addresses)


def pool_config(name: str, spec: IpPoolSpec) -> PoolConfig:
    """The monitor's view of a pool spec (pure)."""
    dnsbl, policy = spec.dnsbl, spec.quarantine
    settings = {s.zone: s for s in dnsbl.zone_settings}
    zones = tuple(dnsbl.zones)
    return PoolConfig(
        name=name, addresses=tuple(expand_addresses(spec.addresses)), zones=zones,
        interval=timedelta(seconds=max(parse_duration(dnsbl.check_interval), 1.0)), resolver=dnsbl.resolver,
        timeout=max(parse_duration(dnsbl.query_timeout), 0.1), confirmations=dnsbl.confirmations,
        release_after=timedelta(seconds=parse_duration(policy.release_after)),
        act_on=tuple(policy.zones) if policy.zones else zones, quarantine_enabled=policy.enabled,
        min_listings=policy.min_listings,
        keys={z: s.key_secret_ref for z, s in settings.items() if s.key_secret_ref is not None},
        errors={z: error_codes(z, settings[z].error_codes if z in settings else ()) for z in zones},
    )


@dataclass(frozen=True)
class ZoneHealth:
    test: SelfTest
    tested: datetime | None


@dataclass(frozen=True)
class PoolView:
    """The monitor's results for one pool: zone health and each (address, zone)'s hysteresis state."""

    zones: Mapping[str, ZoneHealth] = field(default_factory=dict)
    states: Mapping[str, Mapping[str, ZoneState]] = field(default_factory=dict)
    """address → zone → state."""
    checked: Mapping[str, datetime] = field(default_factory=dict)
    """address → last check."""
    quarantine: Mapping[str, Quarantine] = field(default_factory=dict)

    def quarantined(self, address: str) -> bool:
        """The decision the IpPool controller and the MTA config builder read."""
        q = self.quarantine.get(address)
        return q is not None and q.quarantined


def advance(config: PoolConfig, prev: PoolView, tests: Mapping[str, SelfTest],
            answers: Mapping[tuple[str, str], Classified], now: datetime) -> PoolView:
    """The view after one check: self-tests decide which zones count, answers move the hysteresis.

    A zone that failed (or could not be asked for) its self-test moves nothing: its answers are
    recorded as Unusable/Unknown and every address keeps its state there.
    """
    states: dict[str, dict[str, ZoneState]] = {}
    for address in config.addresses:
        before = prev.states.get(address, {})
        row: dict[str, ZoneState] = {}
        for zone in config.zones:
            old = before.get(zone, ZoneState())
            test = tests.get(zone)
            seen = answers.get((address, zone), Classified(Result.UNKNOWN, detail="not asked"))
            if test is None or test.usable is False:
                seen = Classified(Result.UNUSABLE, seen.code, test.message if test else "zone not tested")
            elif test.usable is None and seen.result is not Result.UNKNOWN:
                seen = Classified(Result.UNKNOWN, seen.code, f"zone could not be self-tested: {test.message}")
            row[zone] = step(old, seen, now, config.confirmations, config.release_after)
        states[address] = row
    zones = {z: ZoneHealth(tests[z], now) if z in tests else ZoneHealth(SelfTest(None, "NotTested", ""), None)
             for z in config.zones}
    decisions = {a: quarantine(row, config.act_on, config.quarantine_enabled, config.min_listings)
                 for a, row in states.items()}
    return PoolView(zones=zones, states=states, checked=dict.fromkeys(config.addresses, now), quarantine=decisions)


@dataclass(frozen=True)
class Event:
    type: str
    """Normal or Warning."""
    reason: str
    message: str


def transitions(config: PoolConfig, prev: PoolView, new: PoolView) -> list[Event]:
    """Events worth a human's attention between two views (pure)."""
    events: list[Event] = []
    for zone, health in new.zones.items():
        before = prev.zones.get(zone)
        was = before.test.usable if before else None
        if health.test.usable is False and was is not False:
            events.append(Event("Warning", "BlocklistZoneUnusable", f"{zone}: {health.test.message}; its answers "
                                                                     "are ignored"))
        elif health.test.usable is True and was is False:
            events.append(Event("Normal", "BlocklistZoneUsable", f"{zone} passes its self-test again"))
    for address, row in new.states.items():
        for zone, state in row.items():
            old = prev.states.get(address, {}).get(zone, ZoneState()).state
            if state.state is State.LISTED and not old.listed:
                events.append(Event("Warning", "Listed", f"{address} is listed in {zone} ({state.code})"))
            elif state.state is State.RELEASING and old is State.LISTED:
                events.append(Event("Normal", "Delisted", f"{address} is no longer listed in {zone}; released "
                                                          f"after {config.release_after} without a listing"))
            elif state.state is State.CLEAN and old is State.RELEASING:
                events.append(Event("Normal", "ListingReleased", f"{address}: the listing in {zone} is released"))
        was_q, now_q = prev.quarantined(address), new.quarantined(address)
        if now_q and not was_q:
            zones = ", ".join(new.quarantine[address].zones)
            events.append(Event("Warning", "Quarantined", f"{address} stops sending: listed in {zones}"))
        elif was_q and not now_q:
            events.append(Event("Normal", "QuarantineReleased", f"{address} sends again: no longer quarantined"))
    return events


def address_fields(config: PoolConfig, view: PoolView, address: str) -> dict[str, Any]:
    """The blocklist fields of one address's status entry (camelCase), from the view."""
    row = view.states.get(address)
    if row is None:
        return {}
    entries = []
    for zone in config.zones:
        s = row.get(zone, ZoneState())
        entry = {"zone": zone, "state": s.state.value, "since": stamp(s.since), "code": s.code,
                 "result": s.result.value if s.result else None, "message": s.detail or None}
        entries.append({k: v for k, v in entry.items() if v is not None})
    q = view.quarantine.get(address)
    return {"blocklists": entries, "listings": sorted(z for z, s in row.items() if s.state.listed),
            "quarantined": bool(q and q.quarantined), **({"lastCheck": stamp(view.checked[address])}
                                                          if address in view.checked else {})}


def zone_fields(view: PoolView) -> list[dict[str, Any]]:
    """status.blocklistZones: each zone's self-test verdict."""
    out = []
    for zone, health in view.zones.items():
        entry = {"zone": zone, "usable": health.test.usable, "reason": health.test.reason,
                 "message": health.test.message or None, "lastTest": stamp(health.tested)}
        out.append({k: v for k, v in entry.items() if v is not None})
    return out


def degraded(view: PoolView) -> tuple[str, str, str, str]:
    """The pool's Degraded condition: True naming each quarantined address and its zones."""
    named = [f"{a} (listed in {', '.join(q.zones)})" for a, q in sorted(view.quarantine.items()) if q.quarantined]
    unusable = sorted(z for z, h in view.zones.items() if h.test.usable is False)
    note = f"; zones not usable: {', '.join(unusable)}" if unusable else ""
    if named:
        return ("Degraded", "True", "AddressesQuarantined", f"quarantined: {'; '.join(named)}{note}")
    return ("Degraded", "False", "NoAddressQuarantined", f"no address is quarantined{note}")


def restore(config: PoolConfig, addresses: list[dict[str, Any]]) -> PoolView:
    """The view an operator restart starts from: the states the pool's status last published.

    Without it a restart would forget confirmed listings and release quarantined addresses
    before `releaseAfter`.
    """
    states: dict[str, dict[str, ZoneState]] = {}
    for entry in addresses:
        row = {}
        for b in entry.get("blocklists") or []:
            if b.get("zone") not in config.zones:
                continue
            try:
                state = State(b.get("state", "Unknown"))
            except ValueError:
                continue
            streak = config.confirmations if state.listed else (1 if state is State.PENDING else 0)
            row[b["zone"]] = ZoneState(state=state, since=parse_stamp(b.get("since")), code=b.get("code"),
                                       streak=streak)
        if row:
            states[entry["address"]] = row
    decisions = {a: quarantine(row, config.act_on, config.quarantine_enabled, config.min_listings)
                 for a, row in states.items()}
    return PoolView(states=states, quarantine=decisions)
