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

With a PostgreSQL campaign ledger (`SMTP_INFRA_CAMPAIGN_LEDGER_DSN`) the address also leaves the
ledger rows of the namespace's campaigns (`LedgerErase`), and the request counts as done only then.
An SQLite ledger lives on its campaign's volume, where the operator cannot reach it: it goes with
the Campaign (its claim is owned by it).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from smtpinfra_api.meta import API_VERSION
from smtpinfra_kube import KubeApi

from ..builders import workload
from ..builders.mtaconfig import HTTP_PORT

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


async def process_requests(kube: KubeApi, tenant_namespaces: Mapping[str, str], now: str,
                           erase_ledger: LedgerErase | None = None) -> None:
    """One round over every erasure-request Secret of a known tenant's namespace (the resync calls it)."""
    owners = {namespace: tenant for tenant, namespace in tenant_namespaces.items()}
    for secret in await kube.list_objects("v1", "Secret", label_selector=REQUEST_LABEL):
        meta = secret["metadata"]
        tenant = owners.get(meta["namespace"])
        addresses = requested_addresses(secret)
        if tenant is None or not addresses:
            continue
        reports = [await erase(kube, tenant, address) for address in addresses]
        if erase_ledger is not None:
            campaigns = [c["metadata"]["uid"] for c in await kube.list_objects(API_VERSION, "Campaign",
                                                                                namespace=meta["namespace"])]
            for address, report in zip(addresses, reports, strict=True):
                try:
                    await erase_ledger(address, campaigns)
                except Exception as error:  # the database down: the request stays pending, tried again
                    report.failed[LEDGER] = f"{type(error).__name__}: {error}"[:200]
        path = f"/api/v1/namespaces/{meta['namespace']}/secrets/{meta['name']}"
        await asyncio.to_thread(kube.request, "PATCH", path, body=request_patch(reports, now),
                                content_type="application/merge-patch+json")
