"""GDPR erasure of one address of one tenant on every MTA pod that serves the tenant.

Each MTA pod's erase endpoint (`POST /erase` on its HTTP port, the /stats bearer token) removes the
address from the pod's suppression list, keeping only the salted hash (`sha256:…`) so the address
is never mailed again, and from what the pod keeps of it. `erase_request` is the request body (pure);
`erase` finds the pods and calls each one, reporting every pod that did not confirm.

Declaratively: a Secret in the tenant's namespace labelled `smtpinfra.com/erasure-request` (any value)
with the addresses one per line under the key `addresses`. The resync erases them on every pod; once
every pod confirmed, the operator empties the Secret (the addresses are personal data too) and notes
`smtpinfra.com/erasure-status: erased <time>`; until then it notes which pods have not confirmed and
tries again. A Secret, not the Tenant, so the addresses never sit in a cluster-scoped object's spec.
`smtp-infra tenant erase` calls every pod at once and then files such a request (`file_request`)
for the ledgers, waiting for the operator to report it done.

The address also leaves the campaign ledgers of the namespace, and the request counts as done only
then: with a PostgreSQL ledger (`SMTP_INFRA_CAMPAIGN_LEDGER_DSN`) the operator deletes the rows
itself (`LedgerErase`); an SQLite ledger lives on its campaign's claim, which only a pod mounting it
can reach, so the operator runs a short Job per campaign (`job.ledger_erasure_job`) that reads the
addresses from the request Secret and erases them there, and counts the campaign done when the Job
succeeded. The Jobs are deleted once the whole request is done.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from smtpinfra_api.meta import API_VERSION
from smtpinfra_api.v1alpha1 import TenantSpec
from smtpinfra_kube import KubeApi

from ..builders import workload
from ..builders.mtaconfig import HTTP_PORT
from ..builders.tenant import namespace_name
from . import job as build

ERASE_PATH = "/erase"
REQUEST_LABEL = "smtpinfra.com/erasure-request"
STATUS_ANNOTATION = "smtpinfra.com/erasure-status"
ADDRESSES_KEY = "addresses"
TIMEOUT = 10.0
LEDGER = "campaign ledger"
"""The name a ledger failure is reported under, beside the pods'."""

LedgerErase = Callable[[str, Sequence[str]], Awaitable[int]]
"""Erase an address from the ledgers of these campaign uids; the rows removed."""


def erase_request(tenant: str, address: str) -> bytes:
    """The JSON body the MTA's erase endpoint takes."""
    return json.dumps({"tenant": tenant, "address": address.strip()}).encode()


@dataclass
class ErasureReport:
    """Which pods confirmed the erasure and which did not (and why)."""

    erased: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def serves(server: Mapping[str, Any], tenant: Mapping[str, Any]) -> bool:
    """Whether a server's tenantSelector selects the tenant (the rule its configs are rendered by)."""
    wanted = (((server.get("spec") or {}).get("tenantSelector") or {}).get("matchLabels") or {})
    labels = (tenant.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


async def _post(ip: str, port: int, token: str | None, body: bytes) -> str:
    """POST the erasure; the status line's code and reason (raises OSError when the pod cannot be reached)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), TIMEOUT)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    try:
        writer.write(f"POST {ERASE_PATH} HTTP/1.0\r\nHost: {ip}:{port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n{auth}\r\n".encode() + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(1 << 16), TIMEOUT)
    finally:
        writer.close()
    return raw.split(b"\r\n", 1)[0].decode(errors="replace")


async def erase(kube: KubeApi, tenant: str, address: str) -> ErasureReport:
    """Ask every running MTA pod of every server that serves `tenant` to erase `address`."""
    report = ErasureReport()
    body = await kube.get(API_VERSION, "Tenant", tenant)
    if body is None:
        raise LookupError(f"Tenant {tenant} not found")
    servers = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in
               await kube.list_objects(API_VERSION, "SmtpServer") if serves(s, body)}
    request = erase_request(tenant, address)
    for pod in await kube.list_objects("v1", "Pod", label_selector=workload.MTA_SELECTOR):
        meta, status = pod["metadata"], pod.get("status") or {}
        server = (meta.get("labels") or {}).get("app.kubernetes.io/instance", "")
        if (meta["namespace"], server) not in servers:
            continue
        name = f"{meta['namespace']}/{meta['name']}"
        if status.get("phase") != "Running" or not status.get("podIP"):
            report.failed[name] = f"not running ({status.get('phase')}): erase again when it runs"
            continue
        secret = await kube.get("v1", "Secret", workload.stats_token_secret_name(server), meta["namespace"])
        raw = ((secret or {}).get("data") or {}).get("token")
        token = base64.b64decode(raw).decode().strip() if raw else None
        try:
            answer = await _post(status["podIP"], HTTP_PORT, token, request)
        except (OSError, TimeoutError) as error:
            report.failed[name] = f"unreachable: {error}"
            continue
        parts = answer.split(" ", 2)
        if len(parts) >= 2 and parts[1] in ("200", "204"):
            report.erased.append(name)
        else:
            report.failed[name] = f"answered {answer!r}"
    return report


def requested_addresses(secret: Mapping[str, Any]) -> list[str]:
    """The addresses an erasure-request Secret holds (pure): one per line, blank lines and duplicates dropped."""
    raw = (secret.get("data") or {}).get(ADDRESSES_KEY)
    if not raw:
        return []
    text = base64.b64decode(raw).decode("utf-8", errors="replace")
    return list(dict.fromkeys(line.strip() for line in text.splitlines() if "@" in line))


def request_patch(reports: list[ErasureReport], now: str) -> dict[str, Any]:
    """The merge patch for an erasure-request Secret after one round (pure): emptied once every pod confirmed."""
    failed = sorted({pod for r in reports for pod in r.failed})
    if failed or not any(r.erased for r in reports):
        waiting = ", ".join(failed[:5]) or "no running MTA pod serves the tenant"
        return {"metadata": {"annotations": {STATUS_ANNOTATION: f"pending {now}: not confirmed by {waiting}"}}}
    return {"metadata": {"annotations": {STATUS_ANNOTATION: f"erased {now}"}}, "data": {ADDRESSES_KEY: None}}


def request_digest(secret: Mapping[str, Any]) -> str:
    """What names a request's ledger-erasure Jobs (pure): the Secret's uid and addresses, so a changed
    or re-created request gets Jobs of its own."""
    raw = (secret.get("data") or {}).get(ADDRESSES_KEY) or ""
    return hashlib.sha256(f"{secret['metadata'].get('uid', '')}\0{raw}".encode()).hexdigest()


def job_outcome(job: Mapping[str, Any]) -> str:
    """`Complete`, `Failed` or `Running` from a Job's status conditions (pure)."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"])
    return "Running"


async def erase_sqlite_ledgers(kube: KubeApi, secret: Mapping[str, Any], campaigns: Sequence[Mapping[str, Any]],
                               settings: build.SenderSettings) -> ErasureReport:
    """Start (or read) one ledger-erasure Job per campaign that has an SQLite ledger claim."""
    report = ErasureReport()
    digest = request_digest(secret)
    namespace = secret["metadata"]["namespace"]
    for body in campaigns:
        name = body["metadata"]["name"]
        label = f"{LEDGER} of campaign {name}"
        if await kube.get("v1", "PersistentVolumeClaim", build.resource_name(name), namespace) is None:
            continue  # no SQLite ledger (not started yet, or a PostgreSQL one)
        job_name = build.erasure_job_name(name, digest)
        found = await kube.get("batch/v1", "Job", job_name, namespace)
        if found is None:
            await kube.create(build.ledger_erasure_job(body, settings, secret["metadata"]["name"], ADDRESSES_KEY,
                                                       digest))
            report.failed[label] = f"erasure Job {job_name} started"
            continue
        outcome = job_outcome(found)
        if outcome == "Complete":
            report.erased.append(label)
        elif outcome == "Failed":  # deleted, so the next round starts it again
            await _delete_job(kube, namespace, job_name)
            report.failed[label] = f"erasure Job {job_name} failed: started again"
        else:
            report.failed[label] = f"erasure Job {job_name} running"
    return report


async def _erase_ledgers(kube: KubeApi, secret: Mapping[str, Any], addresses: Sequence[str],
                         reports: list[ErasureReport], erase_ledger: LedgerErase | None,
                         settings: build.SenderSettings | None) -> None:
    campaigns = await kube.list_objects(API_VERSION, "Campaign", namespace=secret["metadata"]["namespace"])
    if erase_ledger is not None:
        uids = [c["metadata"]["uid"] for c in campaigns]
        for address, report in zip(addresses, reports, strict=True):
            try:
                await erase_ledger(address, uids)
            except Exception as error:  # the database down: the request stays pending, tried again
                report.failed[LEDGER] = f"{type(error).__name__}: {error}"[:200]
    elif settings is not None:
        reports.append(await erase_sqlite_ledgers(kube, secret, campaigns, settings))


async def _delete_job(kube: KubeApi, namespace: str, name: str) -> None:
    """A Job and its pods (a Job's default deletion would orphan them)."""
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}"
    await asyncio.to_thread(kube.request, "DELETE", path, body={"propagationPolicy": "Background"})


async def _delete_erasure_jobs(kube: KubeApi, secret: Mapping[str, Any]) -> None:
    namespace = secret["metadata"]["namespace"]
    selector = f"{build.ERASURE_LABEL}={request_digest(secret)[:63]}"
    for found in await kube.list_objects("batch/v1", "Job", namespace=namespace, label_selector=selector):
        await _delete_job(kube, namespace, found["metadata"]["name"])


async def file_request(kube: KubeApi, tenant: str, addresses: Sequence[str]) -> tuple[str, str]:
    """An erasure-request Secret in the tenant's namespace (what `smtp-infra tenant erase` leaves for the
    operator: the campaign ledgers); its (namespace, name)."""
    body = await kube.get(API_VERSION, "Tenant", tenant)
    if body is None:
        raise LookupError(f"Tenant {tenant} not found")
    namespace = namespace_name(tenant, TenantSpec.model_validate(body.get("spec") or {}))
    name = f"erasure-{secrets.token_hex(6)}"
    await kube.create({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                       "metadata": {"name": name, "namespace": namespace, "labels": {REQUEST_LABEL: "cli"}},
                       "stringData": {ADDRESSES_KEY: "".join(f"{a.strip()}\n" for a in addresses)}})
    return namespace, name


async def request_status(kube: KubeApi, namespace: str, name: str) -> str:
    """The operator's note on a request: `erased <time>`, `pending <time>: …`, or "" before its first round."""
    found = await kube.get("v1", "Secret", name, namespace)
    if found is None:
        return "deleted"
    return str((found["metadata"].get("annotations") or {}).get(STATUS_ANNOTATION, ""))


async def process_requests(kube: KubeApi, tenant_namespaces: Mapping[str, str], now: str,
                           erase_ledger: LedgerErase | None = None,
                           sqlite_ledgers: build.SenderSettings | None = None) -> None:
    """One round over every erasure-request Secret of a known tenant's namespace (the resync calls it).

    `erase_ledger` erases from a shared PostgreSQL ledger; else `sqlite_ledgers` (the sender settings)
    erases from each campaign's SQLite ledger by a Job.
    """
    owners = {namespace: tenant for tenant, namespace in tenant_namespaces.items()}
    for secret in await kube.list_objects("v1", "Secret", label_selector=REQUEST_LABEL):
        meta = secret["metadata"]
        tenant = owners.get(meta["namespace"])
        addresses = requested_addresses(secret)
        if tenant is None or not addresses:
            continue
        reports = [await erase(kube, tenant, address) for address in addresses]
        await _erase_ledgers(kube, secret, addresses, reports, erase_ledger, sqlite_ledgers)
        patch = request_patch(reports, now)
        if "data" in patch:  # done: the ledger-erasure Jobs go before the Secret they mount is emptied
            await _delete_erasure_jobs(kube, secret)
        path = f"/api/v1/namespaces/{meta['namespace']}/secrets/{meta['name']}"
        await asyncio.to_thread(kube.request, "PATCH", path, body=patch,
                                content_type="application/merge-patch+json")
