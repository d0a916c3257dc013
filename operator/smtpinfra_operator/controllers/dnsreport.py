"""SmtpServer DNS, the pure side: the `DnsReport` behind `DnsReady`, folded into Ready by `with_dns`.

The I/O (inputs from Secrets and Services, the provider, the deletion handler) is `dns.DnsPublisher`;
this module holds what it decides with: reports, where the records live and which zones they leave.

The rest of this note describes the whole: SmtpServer DNS: gather the inputs, publish through the
provider, verify, report `DnsReady`.

The record builders, ownership, providers and checks live in `..dns` (pure or provider I/O);
this module is the handler side. `reconcile_dns` runs after the server's children are applied
and returns a `DnsReport`; `with_dns` folds it into the server's Ready outcome (pure). Records
are only ever changed through `sync`, which never touches a record set we do not own.

Lifecycle: for provider rfc2136 a Kopf deletion handler (filtered with `when=`, so only those
SmtpServers get a finalizer) removes our records before the object goes; a DNS server that is
down keeps the object with a DnsReady=False condition and retries. After an operator restart
the ownership TXT records tell `sync` what is ours, so nothing is duplicated or lost.

Where the records live is recorded in status.dns.rfc2136. When spec.dns stops pointing there
(provider switched to external-dns or none, another server, a zone dropped) the next reconcile
removes what we own there first; until that succeeded the record stays, and with it the finalizer.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from smtpinfra_api.v1alpha1 import (
    DnsProvider,
    DnsRecordState,
    Rfc2136Spec,
)

from ..builders.mtaconfig import ServerInputs
from ..conditions import FALSE, TRUE, Outcome
from ..dns import (
    DnsUnavailable,
    Record,
    Rfc2136Provider,
    SyncResult,
    fcrdns,
    sync,
    verify,
)
from ..dns.records import ED25519_SPKI_PREFIX, normalize_name, reverse_name, zone_of

log = logging.getLogger(__name__)

DNS_READY = "DnsReady"
DNSENDPOINT_API = "externaldns.k8s.io/v1alpha1"
DNSENDPOINT_KIND = "DNSEndpoint"
MAX_RECORDS = 256
"""Record entries kept in status.dns.records (the rest are counted in `omitted`)."""
RECHECK_SECONDS = float(os.environ.get("SMTP_INFRA_DNS_RECHECK_SECONDS", "300"))
"""A healthy server's DNS is re-read (AXFR) and re-verified this often; unhealthy ones every resync."""
DELETE_RETRY_SECONDS = float(os.environ.get("SMTP_INFRA_DNS_DELETE_RETRY_SECONDS", "30"))
"""How soon a deletion blocked by an unreachable DNS server is retried."""
DNS_TIMEOUT = 3.0

_STATE_ORDER = {s: i for i, s in enumerate([DnsRecordState.CONFLICT, DnsRecordState.ERROR, DnsRecordState.REQUIRED,
                                             DnsRecordState.PENDING, DnsRecordState.PUBLISHED,
                                             DnsRecordState.VERIFIED])}


@dataclass(frozen=True)
class RecordState:
    """What we know about one desired record set."""

    record: Record
    state: DnsRecordState
    message: str = ""


@dataclass(frozen=True)
class DnsReport:
    """The result of one DNS reconcile: the DnsReady condition and status.dns."""

    provider: DnsProvider
    ready: str
    reason: str
    message: str
    records: tuple[RecordState, ...] = ()
    stalled: bool = False
    """Needs the user (foreign record, wrong key, missing Secret)."""
    reconciling: bool = False
    """Retried by the operator (DNS server down, external-dns not done yet)."""
    rfc2136: Rfc2136Spec | None = None
    """Where records of ours may live (status.dns.rfc2136); the deletion finalizer stays while it is set."""

    @property
    def condition(self) -> tuple[str, str, str, str]:
        return (DNS_READY, self.ready, self.reason, self.message)

    def status_field(self) -> dict[str, Any]:
        """status.dns: problems first, bounded to MAX_RECORDS entries (pure)."""
        ordered = sorted(self.records, key=lambda r: (_STATE_ORDER[r.state], r.record.key))
        entries = []
        for item in ordered[:MAX_RECORDS]:
            entry: dict[str, Any] = {"name": item.record.name, "type": item.record.rtype, "state": item.state.value}
            if item.message:
                entry["message"] = item.message[:1024]
            if item.state == DnsRecordState.REQUIRED:
                entry["values"] = [v[:4096] for v in item.record.values[:16]]
            entries.append(entry)
        out: dict[str, Any] = {"provider": self.provider.value, "records": entries}
        if len(ordered) > MAX_RECORDS:
            out["omitted"] = len(ordered) - MAX_RECORDS
        if self.rfc2136 is not None:
            out["rfc2136"] = self.rfc2136.wire()
        return out


def with_dns(outcome: Outcome, report: DnsReport) -> Outcome:
    """Fold DnsReady into the server's Ready outcome (pure).

    DNS that is not ready makes Ready False; when Ready was already False for another reason,
    that reason stays and the DNS problem is appended to its message.
    """
    fields = {**outcome.fields, "dns": report.status_field()}
    extra = (*outcome.extra_conditions, report.condition)
    if report.ready == TRUE:
        return replace(outcome, fields=fields, extra_conditions=extra)
    if outcome.ready == TRUE:
        return replace(outcome, ready=FALSE, reason=report.reason, message=report.message, fields=fields,
                       extra_conditions=extra, stalled=report.stalled, reconciling=report.reconciling)
    return replace(outcome, message=f"{outcome.message}; DNS: {report.message}", fields=fields,
                   extra_conditions=extra, stalled=outcome.stalled or report.stalled,
                   reconciling=outcome.reconciling or report.reconciling)


def _names(states: Iterable[RecordState], limit: int = 3) -> str:
    items = list(states)
    text = "; ".join(s.message or f"{s.record.rtype} {s.record.name}" for s in items[:limit])
    return text + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def required_report(provider: DnsProvider, records: list[Record], message: str) -> DnsReport:
    """Provider none: every record is reported for the user to publish (pure)."""
    states = tuple(RecordState(r, DnsRecordState.REQUIRED, "publish this record yourself") for r in records)
    return DnsReport(provider, TRUE, "NotManaged", f"{len(records)} record(s) computed, not managed: {message}",
                     states)


def rfc2136_report(server: str, result: SyncResult, required: list[Record], checks: list[tuple[Record, str, str]],
                   ptr_failures: list[str]) -> DnsReport:
    """DnsReady from a sync result, verification and FCrDNS (pure).

    `checks` is (record, VerifyState value, message) per record that was not a conflict.
    """
    states: list[RecordState] = [RecordState(c.desired, DnsRecordState.CONFLICT, c.message)
                                 for c in result.plan.conflicts]
    states += [RecordState(r, DnsRecordState(state), message) for r, state, message in checks]
    outside = [RecordState(r, DnsRecordState.REQUIRED, "outside spec.dns.rfc2136 zones: publish it yourself")
               for r in [*required, *result.outside]]
    states += outside
    provider = DnsProvider.RFC2136
    if result.plan.conflicts:
        conflicts = [s for s in states if s.state == DnsRecordState.CONFLICT]
        return DnsReport(provider, FALSE, "DnsConflict",
                         f"{len(conflicts)} record(s) conflict with records smtp-infra does not own (left untouched): "
                         + _names(conflicts), tuple(states), stalled=True)
    bad = [s for s in states if s.state in (DnsRecordState.ERROR, DnsRecordState.CONFLICT)]
    if bad:
        return DnsReport(provider, FALSE, "DnsNotVerified", f"{len(bad)} record(s) not answered as published by "
                         f"{server}: " + _names(bad), tuple(states), reconciling=True)
    if ptr_failures:
        return DnsReport(provider, FALSE, "FcrdnsFailed", "forward-confirmed reverse DNS fails: "
                         + "; ".join(ptr_failures[:3]), tuple(states), reconciling=True)
    message = f"{len(checks)} record(s) published and verified at {server}"
    if outside:
        message += f"; {len(outside)} outside the zones must be published by hand (state Required)"
    return DnsReport(provider, TRUE, "Verified", message, tuple(states))


def external_dns_report(endpoint: str, records: list[Record], required: list[Record], observed: bool) -> DnsReport:
    """DnsReady from the applied DNSEndpoint: ready once external-dns has observed its generation (pure)."""
    state = DnsRecordState.PUBLISHED if observed else DnsRecordState.PENDING
    message = f"in DNSEndpoint {endpoint}" + ("" if observed else ", not yet processed by external-dns")
    states = [RecordState(r, state, message) for r in records]
    states += [RecordState(r, DnsRecordState.REQUIRED, "not published through external-dns: publish it yourself")
               for r in required]
    if not observed:
        return DnsReport(DnsProvider.EXTERNAL_DNS, FALSE, "WaitingForExternalDns",
                         f"DNSEndpoint {endpoint} with {len(records)} record(s) applied; external-dns has not "
                         "processed it yet (is it running with --source=crd?)", tuple(states), reconciling=True)
    return DnsReport(DnsProvider.EXTERNAL_DNS, TRUE, "Published",
                     f"{len(records)} record(s) handed to external-dns in DNSEndpoint {endpoint}", tuple(states))


class DnsInputError(Exception):
    """A DNS input is missing or unusable; reason and message go to DnsReady."""

    def __init__(self, reason: str, message: str, *, stalled: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.stalled = stalled


def _secret_value(secret: Mapping[str, Any], key: str) -> bytes | None:
    value = (secret.get("data") or {}).get(key)
    return base64.b64decode(value) if value else None


def dkim_public_from_txt(txt: str) -> bytes:
    """The DER public key of a `v=DKIM1; k=…; p=…` value (pure); Ed25519's raw key is wrapped."""
    tags = dict(part.strip().partition("=")[::2] for part in txt.split(";") if "=" in part)
    raw = base64.b64decode("".join(tags.get("p", "").split()))
    if tags.get("k", "rsa").strip() == "ed25519":
        return ED25519_SPKI_PREFIX + raw
    return raw


def sending_pairs(inputs: ServerInputs) -> list[tuple[str, str]]:
    """(address, EHLO name) of every runnable replica, as status.sendingAddresses lists them (pure)."""
    return [(a.address, a.ehlo_name) for _, addrs in sorted(inputs.replica_addresses.items()) for a in addrs]


def rfc2136_provider(rfc: Rfc2136Spec, secret: str, zones: list[str] | None = None) -> Rfc2136Provider:
    """The provider for spec.dns.rfc2136: the forward zone and the reverse zones (or just `zones`)."""
    zones = zones if zones is not None else [rfc.zone, *rfc.reverse_zones]
    return Rfc2136Provider(rfc.server, zones, key_name=rfc.tsig_key_name, secret=secret,
                           algorithm=rfc.tsig_algorithm, port=rfc.port, timeout=DNS_TIMEOUT)


def recorded_target(body: Mapping[str, Any]) -> Rfc2136Spec | None:
    """status.dns.rfc2136: where our records were published, as the last reconcile recorded it (pure)."""
    data = (((body.get("status") or {}).get("dns") or {}).get("rfc2136"))
    if not data:
        return None
    try:
        return Rfc2136Spec.model_validate(data)
    except ValidationError:
        return None


def stale_zones(recorded: Rfc2136Spec, current: Rfc2136Spec | None) -> list[str]:
    """Zones of `recorded` our records must leave because spec.dns no longer points there (pure).

    `current` is spec.dns.rfc2136 (None for another provider). Another provider or another server
    (address or port): every recorded zone; the same server: the zones it no longer lists.
    """
    old = [normalize_name(z) for z in (recorded.zone, *recorded.reverse_zones)]
    if current is None or (normalize_name(current.server), current.port) != (normalize_name(recorded.server),
                                                                             recorded.port):
        return old
    keep = {normalize_name(z) for z in (current.zone, *current.reverse_zones)}
    return [z for z in old if z not in keep]


def _nameserver(rfc: Rfc2136Spec) -> str:
    """"address:port" of the configured server for the resolver (it needs an address, not a name)."""
    try:
        address = str(ipaddress.ip_address(rfc.server))
    except ValueError:
        try:
            address = str(socket.getaddrinfo(rfc.server, rfc.port)[0][4][0])
        except OSError as exc:
            raise DnsUnavailable(f"DNS server {rfc.server}: cannot resolve its name: {exc}") from None
    return f"[{address}]:{rfc.port}" if ":" in address else f"{address}:{rfc.port}"


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _check_rfc2136(provider: Rfc2136Provider, owner: str, records: list[Record], nameserver: str,
                   sending: list[tuple[str, str]], reverse_zones: tuple[str, ...]
                   ) -> tuple[SyncResult, list[tuple[Record, str, str]], dict[str, tuple[bool, str]]]:
    """Blocking: sync, verify what is ours at the authoritative server, FCrDNS of managed PTRs."""
    result = sync(provider, owner, records)
    conflicted = {c.desired.key for c in result.plan.conflicts}
    ours = [r for r in records if r.key not in conflicted and r not in result.outside]
    checks = [(v.record, v.state.value, v.message) for v in verify(ours, [nameserver], timeout=DNS_TIMEOUT)]
    ptr: dict[str, tuple[bool, str]] = {}
    for address, ehlo in sending:
        if zone_of(reverse_name(address), reverse_zones) is not None:
            res = fcrdns(address, nameserver, expected_name=ehlo, timeout=DNS_TIMEOUT)
            ptr[address] = (res.ok, res.message)
    return result, checks, ptr

