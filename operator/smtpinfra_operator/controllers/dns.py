"""SmtpServer DNS, the I/O side: gather the inputs, publish through the provider, verify, report `DnsReady`.

The record builders, ownership, providers and checks live in `..dns` (pure or provider I/O), the
report in `dnsreport` (pure). `DnsPublisher.reconcile_dns` runs after the server's children are
applied and returns a `DnsReport`; `with_dns` folds it into the server's Ready outcome. Records are
only ever changed through `sync`, which never touches a record set we do not own. For provider
rfc2136 a Kopf deletion handler (only those SmtpServers get a finalizer) removes our records first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import dns.name
import dns.reversename
import kopf
from pydantic import ValidationError

from smtpinfra_api.v1alpha1 import DkimAlgorithm, DnsProvider, DnsRecordState, Rfc2136Spec, SmtpServer, SmtpServerSpec
from smtpinfra_kube import ApiException, KubeApi

from ..builders import workload
from ..builders.mtaconfig import ServerInputs
from ..conditions import FALSE, READY, TRUE, now_rfc3339, set_condition
from ..dkimkeys import DkimKeyError, DkimKeys
from ..dns import (
    DkimPublicKey,
    DnsConcurrentChange,
    DnsInputs,
    DnsRejected,
    DnsUnavailable,
    RecordError,
    build_dns_endpoint,
    dns_endpoint_name,
    inputs_from_spec,
    remove_owned,
    split_records,
)
from ..statuswriter import StatusWriter
from .dnsreport import (
    DELETE_RETRY_SECONDS,
    DNS_READY,
    DNSENDPOINT_API,
    DNSENDPOINT_KIND,
    RECHECK_SECONDS,
    DnsInputError,
    DnsReport,
    RecordState,
    _check_rfc2136,
    _fingerprint,
    _nameserver,
    _secret_value,
    dkim_public_from_txt,
    external_dns_report,
    recorded_target,
    required_report,
    rfc2136_provider,
    rfc2136_report,
    sending_pairs,
    stale_zones,
)

log = logging.getLogger(__name__)


@dataclass
class _Memo:
    fingerprint: str
    at: float
    report: DnsReport
    ptr_ok: dict[str, bool] = field(default_factory=dict)


def uses_rfc2136(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    """Only these SmtpServers get a finalizer: their records live outside Kubernetes.

    Provider rfc2136, or records still recorded in status.dns.rfc2136 (spec.dns changed and the
    old records are not removed yet).
    """
    recorded = (status.get("dns") if status else None) or {}
    return bool((spec.get("dns") or {}).get("provider") == DnsProvider.RFC2136.value or recorded.get("rfc2136"))


class DnsPublisher:
    """The DNS side of SmtpServer reconciles; its state (what was checked, what is being deleted) is its own."""

    def __init__(self, kube: KubeApi, status: StatusWriter, clock: Callable[[], float],
                 note_ptr_checks: Callable[[Iterable[str], dict[str, bool]], None], keys: DkimKeys) -> None:
        self.kube = kube
        self.keys = keys
        self.status = status
        self._monotonic = clock
        self._note_ptr_checks = note_ptr_checks
        self._memo: dict[str, _Memo] = {}
        self._deleting: dict[str, tuple[str, str]] = {}
        """uid → (reason, message) of servers whose deletion handler runs: a reconcile still in flight
        reports that instead of publishing again (and overwriting the deletion's condition)."""
        self._dns_locks: dict[str, asyncio.Lock] = {}

    def _lock(self, uid: str) -> asyncio.Lock:
        return self._dns_locks.setdefault(uid, asyncio.Lock())

    def forget(self, uid: str) -> None:
        """A server is gone: drop its memo and lock."""
        self._memo.pop(uid, None)
        self._dns_locks.pop(uid, None)

    async def _dkim_keys(self, owner: workload.Owner, spec: SmtpServerSpec) -> list[DkimPublicKey]:
        """Every configured selector's key from its Secret (`private.pem`, else `dns.txt`)."""
        keys = []
        for key in spec.dkim.keys:
            name = workload.dkim_secret_name(owner.name, key)
            secret = await self.kube.get_known("v1", "Secret", name, owner.namespace)
            where = f"DKIM {key.selector}._domainkey.{key.domain}"
            if secret is None:
                raise DnsInputError("DkimSecretNotFound", f"Secret {owner.namespace}/{name} for {where} not found")
            private = _secret_value(secret, "private.pem")
            if private is not None:
                try:
                    public = await self.keys.public_der(private)
                except DkimKeyError as exc:
                    raise DnsInputError("DkimSecretInvalid", f"Secret {owner.namespace}/{name} for {where}: "
                                        f"private.pem: {exc}") from None
            elif (txt := _secret_value(secret, "dns.txt")) is not None:
                public = dkim_public_from_txt(txt.decode())
            else:
                raise DnsInputError("DkimSecretInvalid", f"Secret {owner.namespace}/{name} for {where} has neither "
                                    "private.pem nor dns.txt")
            keys.append(DkimPublicKey(key.domain, key.selector, public, DkimAlgorithm(key.algorithm)))
        return keys

    async def _service_addresses(self, owner: workload.Owner, spec: SmtpServerSpec) -> list[str]:
        """Externally reachable addresses of the MTA Services (load-balancer ingress, externalIPs)."""
        names = []
        if spec.listeners.inbound.enabled:
            names.append(workload.inbound_service_name(owner.name))
        if spec.listeners.submission.enabled or spec.listeners.implicit_tls.enabled:
            names.append(workload.submission_service_name(owner.name))
        found: set[str] = set()
        for name in names:
            service = await self.kube.get_known("v1", "Service", name, owner.namespace)
            if service is None:
                continue
            found.update((service.get("spec") or {}).get("externalIPs") or [])
            for ingress in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
                if ingress.get("ip"):
                    found.add(ingress["ip"])
        return sorted(found, key=ipaddress.ip_address)

    async def gather_inputs(self, owner: workload.Owner, spec: SmtpServerSpec, server: ServerInputs) -> DnsInputs:
        """The DNS inputs of one server: addresses, the served tenants' domains, DKIM keys."""
        domains = sorted({d for t in server.tenants for d in t.spec.sender_domains})
        return inputs_from_spec(f"{owner.namespace}/{owner.name}", spec, sending=sending_pairs(server),
                                service_addresses=await self._service_addresses(owner, spec), sender_domains=domains,
                                dkim_keys=await self._dkim_keys(owner, spec))

    async def _tsig_secret(self, namespace: str, rfc: Rfc2136Spec, where: str = "spec.dns.rfc2136") -> str:
        ref = rfc.tsig_secret_ref
        secret = await self.kube.get_known("v1", "Secret", ref.name, namespace)
        if secret is None:
            raise DnsInputError("TsigSecretNotFound",
                                f"Secret {namespace}/{ref.name} ({where}.tsigSecretRef) not found")
        value = _secret_value(secret, ref.key)
        if not value:
            raise DnsInputError("TsigSecretNotFound",
                                f"Secret {namespace}/{ref.name} has no key {ref.key} ({where}.tsigSecretRef)")
        return value.decode().strip()

    async def _reconcile_rfc2136(self, body: Mapping[str, Any], spec: SmtpServerSpec, inputs: DnsInputs,
                                 server: ServerInputs) -> DnsReport:
        rfc = spec.dns.rfc2136
        assert rfc is not None
        namespace = body["metadata"]["namespace"]
        uid = body["metadata"]["uid"]
        secret = await self._tsig_secret(namespace, rfc)
        records, required = split_records(inputs)
        sending = sending_pairs(server)
        fingerprint = _fingerprint(rfc.model_dump(), secret, records, required, sending)
        memo = self._memo.get(uid)
        if (memo is not None and memo.fingerprint == fingerprint and memo.report.ready == TRUE
                and self._monotonic() - memo.at < RECHECK_SECONDS):
            return memo.report
        provider = rfc2136_provider(rfc, secret)
        where = f"{rfc.server}:{rfc.port}"
        async with self._lock(uid):
            if uid in self._deleting:
                raise DnsInputError(*self._deleting[uid], stalled=False)
            nameserver = await asyncio.to_thread(_nameserver, rfc)
            result, checks, ptr = await asyncio.to_thread(_check_rfc2136, provider, inputs.owner, records, nameserver,
                                                          sending, tuple(rfc.reverse_zones))
        if result.applied:
            log.info("DNS %s: %s", inputs.owner, result.plan.summary())
            await asyncio.to_thread(self.status.post_event, body, "Normal", "DnsRecordsUpdated",
                                    f"{where}: {result.plan.summary()}")
        previous = memo.ptr_ok if memo else {}
        ptr_ok = {a: ok for a, (ok, _) in ptr.items()}
        desired_names = {r.name for r in records}
        for r in result.plan.to_delete:
            if r.rtype == "PTR" and r.name not in desired_names:  # a retired address: its PTR is gone now
                ptr_ok.setdefault(str(dns.reversename.to_address(dns.name.from_text(r.name))), False)
        if ptr_ok != previous or memo is None:
            self._note_ptr_checks(spec.ip_pools, ptr_ok)  # the pools publish them: they own their status
        failures = [message for ok, message in ptr.values() if not ok]
        report = rfc2136_report(where, result, required, checks, failures)
        self._memo[uid] = _Memo(fingerprint, self._monotonic(), report, ptr_ok)
        return report

    async def _reconcile_external_dns(self, body: Mapping[str, Any], inputs: DnsInputs) -> DnsReport:
        records, required = split_records(inputs)
        if not await self.kube.kind_exists(DNSENDPOINT_API, DNSENDPOINT_KIND):
            return DnsReport(DnsProvider.EXTERNAL_DNS, FALSE, "ExternalDnsNotInstalled",
                             "spec.dns.provider is external-dns, but the DNSEndpoint kind "
                             "(externaldns.k8s.io/v1alpha1) is not installed",
                             tuple(RecordState(r, DnsRecordState.REQUIRED) for r in records + required), stalled=True)
        endpoint = build_dns_endpoint(inputs.owner, records, owner_uid=body["metadata"]["uid"])
        applied = await self.kube.apply(endpoint)
        meta = applied.get("metadata") or {}
        observed = ((applied.get("status") or {}).get("observedGeneration") or 0) >= (meta.get("generation") or 1)
        name = f"{meta.get('namespace')}/{meta.get('name')}"
        return external_dns_report(name, records, required, observed)

    async def _remove_stale(self, body: Mapping[str, Any], owner: workload.Owner, recorded: Rfc2136Spec,
                            zones: list[str]) -> None:
        """Remove what `owner` owns in `zones` of the recorded server (spec.dns points elsewhere now).

        Raises DnsInputError naming the recorded server when that cannot be done yet, so DnsReady
        says why and status.dns.rfc2136 (and the finalizer) stay until a later reconcile succeeds.
        """
        key = f"{owner.namespace}/{owner.name}"
        where = f"{recorded.server}:{recorded.port}"
        what = f"the records of {key} in {', '.join(zones)} at {where} (spec.dns no longer points there)"
        try:
            secret = await self._tsig_secret(owner.namespace, recorded, "status.dns.rfc2136")
            provider = rfc2136_provider(recorded, secret, zones)
            async with self._lock(owner.uid):
                result = await asyncio.to_thread(remove_owned, provider, key)
        except DnsInputError as error:
            raise DnsInputError(error.reason, f"cannot remove {what}: {error.message}") from None
        except (DnsUnavailable, DnsConcurrentChange, DnsRejected) as error:
            raise DnsInputError("DnsCleanupDelayed", f"cannot remove {what} yet: {error}; retrying",
                                stalled=isinstance(error, DnsRejected)) from None
        self._memo.pop(owner.uid, None)
        if result.applied:
            log.info("DNS %s: removed from %s after spec.dns changed: %s", key, where, result.plan.summary())
            await asyncio.to_thread(self.status.post_event, body, "Normal", "DnsRecordsRemoved",
                                    f"{where}: {len(result.plan.to_delete)} record set(s) removed from "
                                    f"{', '.join(zones)} (spec.dns no longer points there)")

    async def _publish(self, body: Mapping[str, Any], owner: workload.Owner, spec: SmtpServerSpec, server: ServerInputs,
                       provider: DnsProvider) -> DnsReport:
        previous = ((body.get("status") or {}).get("dns") or {}).get("provider")
        if previous == DnsProvider.EXTERNAL_DNS.value and provider != DnsProvider.EXTERNAL_DNS \
                and await self.kube.kind_exists(DNSENDPOINT_API, DNSENDPOINT_KIND):
            await self.kube.delete(DNSENDPOINT_API, DNSENDPOINT_KIND, dns_endpoint_name(owner.name), owner.namespace)
        inputs = await self.gather_inputs(owner, spec, server)
        if provider == DnsProvider.NONE:
            return required_report(provider, [r for part in split_records(inputs) for r in part],
                                   "spec.dns.provider is none; publish the records in status.dns.records yourself")
        if provider == DnsProvider.EXTERNAL_DNS:
            return await self._reconcile_external_dns(body, inputs)
        return await self._reconcile_rfc2136(body, spec, inputs, server)

    async def reconcile_dns(self, body: Mapping[str, Any], owner: workload.Owner, spec: SmtpServerSpec,
                            server: ServerInputs) -> DnsReport:
        """Publish and check the server's records through its provider; never raises for DNS trouble.

        Records left at a server or zone spec.dns no longer names (status.dns.rfc2136) are removed
        first; the report records where ours live now, for the next reconcile and the finalizer.
        """
        provider = DnsProvider(spec.dns.provider)
        current = spec.dns.rfc2136 if provider == DnsProvider.RFC2136 else None
        recorded = recorded_target(body)
        target = recorded or current
        if owner.uid in self._deleting:
            reason, message = self._deleting[owner.uid]
            return DnsReport(provider, FALSE, reason, message, reconciling=True, rfc2136=target)
        if current is None:
            self._memo.pop(owner.uid, None)
        try:
            if recorded is not None and (stale := stale_zones(recorded, current)):
                await self._remove_stale(body, owner, recorded, stale)
            target = current
            report = await self._publish(body, owner, spec, server, provider)
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
        except ApiException as error:
            # applying the DNSEndpoint or writing ptrOk to an IpPool; retried on the next resync
            report = DnsReport(provider, FALSE, "DnsApiError", f"Kubernetes API call failed: {error.status} "
                               f"{error.reason}: {str(error.body or '')[:500]}", reconciling=True)
        return replace(report, rfc2136=target)

    async def _mark_blocked(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        """DnsReady=False and Ready=False on the deleting object, patching only the conditions."""
        meta = body["metadata"]
        now = now_rfc3339()
        conditions = [dict(c) for c in (body.get("status") or {}).get("conditions") or []]
        generation = meta.get("generation")
        conditions = set_condition(conditions, DNS_READY, FALSE, reason, message, generation, now)
        conditions = set_condition(conditions, READY, FALSE, reason, message, generation, now)
        await self.status.patch_status(SmtpServer, meta["name"], meta["namespace"],
                                       {"status": {"conditions": conditions}})

    async def on_server_deleted(self, body: kopf.Body, namespace: str | None, name: str, retry: int,
                                               **_: Any) -> None:
        """Remove every record this server owns before it goes; foreign records are never touched.

        A DNS server that is down (or refusing) keeps the SmtpServer with DnsReady=False and an
        Event, retrying every DELETE_RETRY_SECONDS, instead of losing track of the records.
        """
        assert namespace is not None
        uid = body["metadata"]["uid"]
        owner = f"{namespace}/{name}"
        self._deleting.setdefault(uid, ("DnsCleanup", f"removing the DNS records of {owner} before deletion"))
        self._memo.pop(uid, None)
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
                async with self._lock(uid):
                    provider = rfc2136_provider(rfc, await self._tsig_secret(namespace, rfc, where))
                    result = await asyncio.to_thread(remove_owned, provider, owner)
                removed += len(result.plan.to_delete)
                log.info("DNS %s removed on deletion from %s:%s: %s", owner, rfc.server, rfc.port,
                         result.plan.summary())
        except (DnsInputError, DnsUnavailable, DnsConcurrentChange, DnsRejected) as error:
            reason = error.reason if isinstance(error, DnsInputError) else "DnsCleanupDelayed"
            message = (f"deletion waits until the records of {owner} are removed from {rfc.server}:{rfc.port}: "
                       f"{error}; retrying every {DELETE_RETRY_SECONDS:g}s")
            self._deleting[uid] = (reason, message)
            await self._mark_blocked(body, reason, message)
            if retry == 0:
                await asyncio.to_thread(self.status.post_event, body, "Warning", reason, message)
            raise kopf.TemporaryError(message, delay=DELETE_RETRY_SECONDS) from None
        # Keep the uid marked: a reconcile waiting for the lock must not publish again. uids are
        # never reused, so only the size needs a bound.
        self._deleting[uid] = ("Deleted", f"the DNS records of {owner} were removed")
        while len(self._deleting) > 10000:
            self._deleting.pop(next(iter(self._deleting)))
        where = ", ".join(f"{t.server}:{t.port}" for t, _ in targets)
        await asyncio.to_thread(self.status.post_event, body, "Normal", "DnsRecordsRemoved",
                                f"{where}: {removed} record set(s) removed")

