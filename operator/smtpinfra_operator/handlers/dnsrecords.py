"""SmtpServer DNS: gather the inputs, publish through the provider, verify, report `DnsReady`.

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

import asyncio
import base64
import hashlib
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import dns.name
import dns.reversename
import kopf
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import ValidationError

from smtpinfra_api.meta import GROUP, VERSION
from smtpinfra_api.v1alpha1 import (
    DkimAlgorithm,
    DnsProvider,
    DnsRecordState,
    Rfc2136Spec,
    SmtpServer,
    SmtpServerSpec,
)

from .. import kube
from ..builders import workload
from ..builders.mtaconfig import ServerInputs
from ..conditions import FALSE, READY, TRUE, Outcome, now_rfc3339, set_condition
from ..dns import (
    DkimPublicKey,
    DnsConcurrentChange,
    DnsInputs,
    DnsRejected,
    DnsUnavailable,
    Record,
    RecordError,
    Rfc2136Provider,
    SyncResult,
    build_dns_endpoint,
    build_records,
    dns_endpoint_name,
    fcrdns,
    inputs_from_spec,
    remove_owned,
    sync,
    unmanaged_records,
    verify,
)
from ..dns.records import normalize_name, reverse_name, zone_of
from ..statuswriter import custom_objects_api, post_event
from .ippool import note_ptr_checks

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


# ------------------------------------------------------------------------------------ report


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


# ------------------------------------------------------------------------------------ gather


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
        return ed25519.Ed25519PublicKey.from_public_bytes(raw).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return raw


async def _dkim_keys(owner: workload.Owner, spec: SmtpServerSpec) -> list[DkimPublicKey]:
    """Every configured selector's key from its Secret (`private.pem`, else `dns.txt`)."""
    keys = []
    for key in spec.dkim.keys:
        name = workload.dkim_secret_name(owner.name, key)
        secret = await kube.get_known("v1", "Secret", name, owner.namespace)
        where = f"DKIM {key.selector}._domainkey.{key.domain}"
        if secret is None:
            raise DnsInputError("DkimSecretNotFound", f"Secret {owner.namespace}/{name} for {where} not found")
        material = _secret_value(secret, "private.pem")
        if material is None and (txt := _secret_value(secret, "dns.txt")) is not None:
            material = dkim_public_from_txt(txt.decode())
        if material is None:
            raise DnsInputError("DkimSecretInvalid", f"Secret {owner.namespace}/{name} for {where} has neither "
                                "private.pem nor dns.txt")
        keys.append(DkimPublicKey(key.domain, key.selector, material, DkimAlgorithm(key.algorithm)))
    return keys


async def _service_addresses(owner: workload.Owner, spec: SmtpServerSpec) -> list[str]:
    """Externally reachable addresses of the MTA Services (load-balancer ingress, externalIPs)."""
    names = []
    if spec.listeners.inbound.enabled:
        names.append(workload.inbound_service_name(owner.name))
    if spec.listeners.submission.enabled or spec.listeners.implicit_tls.enabled:
        names.append(workload.submission_service_name(owner.name))
    found: set[str] = set()
    for name in names:
        service = await kube.get_known("v1", "Service", name, owner.namespace)
        if service is None:
            continue
        found.update((service.get("spec") or {}).get("externalIPs") or [])
        for ingress in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
            if ingress.get("ip"):
                found.add(ingress["ip"])
    return sorted(found, key=ipaddress.ip_address)


def sending_pairs(inputs: ServerInputs) -> list[tuple[str, str]]:
    """(address, EHLO name) of every runnable replica, as status.sendingAddresses lists them (pure)."""
    return [(a.address, a.ehlo_name) for _, addrs in sorted(inputs.replica_addresses.items()) for a in addrs]


async def gather_inputs(owner: workload.Owner, spec: SmtpServerSpec, server: ServerInputs) -> DnsInputs:
    """The DNS inputs of one server: addresses, the served tenants' domains, DKIM keys."""
    domains = sorted({d for t in server.tenants for d in t.spec.sender_domains})
    return inputs_from_spec(f"{owner.namespace}/{owner.name}", spec, sending=sending_pairs(server),
                            service_addresses=await _service_addresses(owner, spec), sender_domains=domains,
                            dkim_keys=await _dkim_keys(owner, spec))


async def _tsig_secret(namespace: str, rfc: Rfc2136Spec, where: str = "spec.dns.rfc2136") -> str:
    ref = rfc.tsig_secret_ref
    secret = await kube.get_known("v1", "Secret", ref.name, namespace)
    if secret is None:
        raise DnsInputError("TsigSecretNotFound",
                            f"Secret {namespace}/{ref.name} ({where}.tsigSecretRef) not found")
    value = _secret_value(secret, ref.key)
    if not value:
        raise DnsInputError("TsigSecretNotFound",
                            f"Secret {namespace}/{ref.name} has no key {ref.key} ({where}.tsigSecretRef)")
    return value.decode().strip()


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


# ----------------------------------------------------------------------------------- reconcile


@dataclass
class _Memo:
    fingerprint: str
    at: float
    report: DnsReport
    ptr_ok: dict[str, bool] = field(default_factory=dict)


_memo: dict[str, _Memo] = {}
_deleting: dict[str, tuple[str, str]] = {}
"""uid → (reason, message) of servers whose deletion handler runs: a reconcile still in flight
reports that instead of publishing again (and overwriting the deletion's condition)."""
_dns_locks: dict[str, asyncio.Lock] = {}


def _lock(uid: str) -> asyncio.Lock:
    return _dns_locks.setdefault(uid, asyncio.Lock())


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


async def _reconcile_rfc2136(body: Mapping[str, Any], spec: SmtpServerSpec, inputs: DnsInputs,
                             server: ServerInputs) -> DnsReport:
    rfc = spec.dns.rfc2136
    assert rfc is not None
    namespace = body["metadata"]["namespace"]
    uid = body["metadata"]["uid"]
    secret = await _tsig_secret(namespace, rfc)
    records, required = build_records(inputs), unmanaged_records(inputs)
    sending = sending_pairs(server)
    fingerprint = _fingerprint(rfc.model_dump(), secret, records, required, sending)
    memo = _memo.get(uid)
    if (memo is not None and memo.fingerprint == fingerprint and memo.report.ready == TRUE
            and time.monotonic() - memo.at < RECHECK_SECONDS):
        return memo.report
    provider = rfc2136_provider(rfc, secret)
    where = f"{rfc.server}:{rfc.port}"
    async with _lock(uid):
        if uid in _deleting:
            raise DnsInputError(*_deleting[uid], stalled=False)
        nameserver = await asyncio.to_thread(_nameserver, rfc)
        result, checks, ptr = await asyncio.to_thread(_check_rfc2136, provider, inputs.owner, records, nameserver,
                                                      sending, tuple(rfc.reverse_zones))
    if result.applied:
        log.info("DNS %s: %s", inputs.owner, result.plan.summary())
        await asyncio.to_thread(post_event, body, "Normal", "DnsRecordsUpdated",
                                f"{where}: {result.plan.summary()}")
    previous = memo.ptr_ok if memo else {}
    ptr_ok = {a: ok for a, (ok, _) in ptr.items()}
    desired_names = {r.name for r in records}
    for r in result.plan.to_delete:
        if r.rtype == "PTR" and r.name not in desired_names:  # a retired address: its PTR is gone now
            ptr_ok.setdefault(str(dns.reversename.to_address(dns.name.from_text(r.name))), False)
    if ptr_ok != previous or memo is None:
        note_ptr_checks(spec.ip_pools, ptr_ok)  # the pools publish them: they own their status
    failures = [message for ok, message in ptr.values() if not ok]
    report = rfc2136_report(where, result, required, checks, failures)
    _memo[uid] = _Memo(fingerprint, time.monotonic(), report, ptr_ok)
    return report


async def _reconcile_external_dns(body: Mapping[str, Any], inputs: DnsInputs) -> DnsReport:
    records, required = build_records(inputs), unmanaged_records(inputs)
    if not await kube.kind_exists(DNSENDPOINT_API, DNSENDPOINT_KIND):
        return DnsReport(DnsProvider.EXTERNAL_DNS, FALSE, "ExternalDnsNotInstalled",
                         "spec.dns.provider is external-dns, but the DNSEndpoint kind (externaldns.k8s.io/v1alpha1) "
                         "is not installed", tuple(RecordState(r, DnsRecordState.REQUIRED) for r in records + required),
                         stalled=True)
    endpoint = build_dns_endpoint(inputs.owner, records, owner_uid=body["metadata"]["uid"])
    applied = await kube.apply(endpoint)
    meta = applied.get("metadata") or {}
    observed = ((applied.get("status") or {}).get("observedGeneration") or 0) >= (meta.get("generation") or 1)
    name = f"{meta.get('namespace')}/{meta.get('name')}"
    return external_dns_report(name, records, required, observed)


async def _remove_stale(body: Mapping[str, Any], owner: workload.Owner, recorded: Rfc2136Spec,
                        zones: list[str]) -> None:
    """Remove what `owner` owns in `zones` of the recorded server (spec.dns points elsewhere now).

    Raises DnsInputError naming the recorded server when that cannot be done yet, so DnsReady
    says why and status.dns.rfc2136 (and the finalizer) stay until a later reconcile succeeds.
    """
    key = f"{owner.namespace}/{owner.name}"
    where = f"{recorded.server}:{recorded.port}"
    what = f"the records of {key} in {', '.join(zones)} at {where} (spec.dns no longer points there)"
    try:
        secret = await _tsig_secret(owner.namespace, recorded, "status.dns.rfc2136")
        provider = rfc2136_provider(recorded, secret, zones)
        async with _lock(owner.uid):
            result = await asyncio.to_thread(remove_owned, provider, key)
    except DnsInputError as error:
        raise DnsInputError(error.reason, f"cannot remove {what}: {error.message}") from None
    except (DnsUnavailable, DnsConcurrentChange, DnsRejected) as error:
        raise DnsInputError("DnsCleanupDelayed", f"cannot remove {what} yet: {error}; retrying",
                            stalled=isinstance(error, DnsRejected)) from None
    _memo.pop(owner.uid, None)
    if result.applied:
        log.info("DNS %s: removed from %s after spec.dns changed: %s", key, where, result.plan.summary())
        await asyncio.to_thread(post_event, body, "Normal", "DnsRecordsRemoved",
                                f"{where}: {len(result.plan.to_delete)} record set(s) removed from "
                                f"{', '.join(zones)} (spec.dns no longer points there)")


async def _publish(body: Mapping[str, Any], owner: workload.Owner, spec: SmtpServerSpec, server: ServerInputs,
                   provider: DnsProvider) -> DnsReport:
    previous = ((body.get("status") or {}).get("dns") or {}).get("provider")
    if previous == DnsProvider.EXTERNAL_DNS.value and provider != DnsProvider.EXTERNAL_DNS \
            and await kube.kind_exists(DNSENDPOINT_API, DNSENDPOINT_KIND):
        await kube.delete(DNSENDPOINT_API, DNSENDPOINT_KIND, dns_endpoint_name(owner.name), owner.namespace)
    inputs = await gather_inputs(owner, spec, server)
    if provider == DnsProvider.NONE:
        return required_report(provider, build_records(inputs) + unmanaged_records(inputs),
                               "spec.dns.provider is none; publish the records in status.dns.records yourself")
    if provider == DnsProvider.EXTERNAL_DNS:
        return await _reconcile_external_dns(body, inputs)
    return await _reconcile_rfc2136(body, spec, inputs, server)


async def reconcile_dns(body: Mapping[str, Any], owner: workload.Owner, spec: SmtpServerSpec,
                        server: ServerInputs) -> DnsReport:
    """Publish and check the server's records through its provider; never raises for DNS trouble.

    Records left at a server or zone spec.dns no longer names (status.dns.rfc2136) are removed
    first; the report records where ours live now, for the next reconcile and the finalizer.
    """
    provider = DnsProvider(spec.dns.provider)
    current = spec.dns.rfc2136 if provider == DnsProvider.RFC2136 else None
    recorded = recorded_target(body)
    target = recorded or current
    if owner.uid in _deleting:
        reason, message = _deleting[owner.uid]
        return DnsReport(provider, FALSE, reason, message, reconciling=True, rfc2136=target)
    if current is None:
        _memo.pop(owner.uid, None)
    try:
        if recorded is not None and (stale := stale_zones(recorded, current)):
            await _remove_stale(body, owner, recorded, stale)
        target = current
        report = await _publish(body, owner, spec, server, provider)
    except DnsInputError as error:
        report = DnsReport(provider, FALSE, error.reason, error.message, stalled=error.stalled,
                           reconciling=not error.stalled)
    except RecordError as error:
        report = DnsReport(provider, FALSE, "InvalidDnsRecord", str(error), stalled=True)
    except DnsUnavailable as error:
        report = DnsReport(provider, FALSE, "DnsUnavailable", str(error), reconciling=True)
    except DnsConcurrentChange as error:
        report = DnsReport(provider, FALSE, "DnsConcurrentChange", str(error), reconciling=True)
    except DnsRejected as error:
        report = DnsReport(provider, FALSE, "DnsRejected", str(error), stalled=True)
    except kube.ApiException as error:
        # applying the DNSEndpoint or writing ptrOk to an IpPool; retried on the next resync
        report = DnsReport(provider, FALSE, "DnsApiError", f"Kubernetes API call failed: {error.status} "
                           f"{error.reason}: {str(error.body or '')[:500]}", reconciling=True)
    return replace(report, rfc2136=target)


# ------------------------------------------------------------------------------------ deletion


def _uses_rfc2136(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    """Only these SmtpServers get a finalizer: their records live outside Kubernetes.

    Provider rfc2136, or records still recorded in status.dns.rfc2136 (spec.dns changed and the
    old records are not removed yet).
    """
    recorded = (status.get("dns") if status else None) or {}
    return bool((spec.get("dns") or {}).get("provider") == DnsProvider.RFC2136.value or recorded.get("rfc2136"))


async def _mark_blocked(body: Mapping[str, Any], reason: str, message: str) -> None:
    """DnsReady=False and Ready=False on the deleting object, patching only the conditions."""
    meta = body["metadata"]
    now = now_rfc3339()
    conditions = [dict(c) for c in (body.get("status") or {}).get("conditions") or []]
    generation = meta.get("generation")
    conditions = set_condition(conditions, DNS_READY, FALSE, reason, message, generation, now)
    conditions = set_condition(conditions, READY, FALSE, reason, message, generation, now)
    api = custom_objects_api()
    await asyncio.to_thread(api.patch_namespaced_custom_object_status, GROUP, VERSION, meta["namespace"],
                            SmtpServer.plural, meta["name"], {"status": {"conditions": conditions}})


@kopf.on.delete(GROUP, VERSION, SmtpServer.plural, when=_uses_rfc2136, id="dns-records")
async def on_server_deleted_remove_records(body: kopf.Body, namespace: str | None, name: str, retry: int,
                                           **_: Any) -> None:
    """Remove every record this server owns before it goes; foreign records are never touched.

    A DNS server that is down (or refusing) keeps the SmtpServer with DnsReady=False and an
    Event, retrying every DELETE_RETRY_SECONDS, instead of losing track of the records.
    """
    assert namespace is not None
    uid = body["metadata"]["uid"]
    owner = f"{namespace}/{name}"
    _deleting.setdefault(uid, ("DnsCleanup", f"removing the DNS records of {owner} before deletion"))
    _memo.pop(uid, None)
    try:
        spec: SmtpServerSpec | None = SmtpServerSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError:
        spec = None  # never valid, so never published anything there
    targets: list[tuple[Rfc2136Spec, str]] = []  # the recorded place first: a spec edit may not be applied yet
    if (recorded := recorded_target(body)) is not None:
        targets.append((recorded, "status.dns.rfc2136"))
    if spec is not None and spec.dns.provider == DnsProvider.RFC2136 and spec.dns.rfc2136 is not None \
            and spec.dns.rfc2136 != recorded:
        targets.append((spec.dns.rfc2136, "spec.dns.rfc2136"))
    if not targets:
        return
    removed = 0
    rfc = targets[0][0]
    try:
        for rfc, where in targets:
            async with _lock(uid):
                provider = rfc2136_provider(rfc, await _tsig_secret(namespace, rfc, where))
                result = await asyncio.to_thread(remove_owned, provider, owner)
            removed += len(result.plan.to_delete)
            log.info("DNS %s removed on deletion from %s:%s: %s", owner, rfc.server, rfc.port, result.plan.summary())
    except (DnsInputError, DnsUnavailable, DnsConcurrentChange, DnsRejected) as error:
        reason = error.reason if isinstance(error, DnsInputError) else "DnsCleanupDelayed"
        message = (f"deletion waits until the records of {owner} are removed from {rfc.server}:{rfc.port}: "
                   f"{error}; retrying every {DELETE_RETRY_SECONDS:g}s")
        _deleting[uid] = (reason, message)
        await _mark_blocked(body, reason, message)
        if retry == 0:
            await asyncio.to_thread(post_event, body, "Warning", reason, message)
        raise kopf.TemporaryError(message, delay=DELETE_RETRY_SECONDS) from None
    # Keep the uid marked: a reconcile waiting for the lock must not publish again. uids are
    # never reused, so only the size needs a bound.
    _deleting[uid] = ("Deleted", f"the DNS records of {owner} were removed")
    while len(_deleting) > 10000:
        _deleting.pop(next(iter(_deleting)))
    where = ", ".join(f"{t.server}:{t.port}" for t, _ in targets)
    await asyncio.to_thread(post_event, body, "Normal", "DnsRecordsRemoved",
                            f"{where}: {removed} record set(s) removed")


__all__ = ["DNS_READY", "DnsReport", "reconcile_dns", "with_dns"]
