"""external-dns provider: a pure builder of one `DNSEndpoint` per SmtpServer.

The operator applies the object; external-dns (with `--source=crd`) publishes it through
whatever DNS service it is configured for. Ownership is external-dns's own TXT registry
(`--txt-owner-id`), so no companion TXTs are added here: external-dns already refuses to touch
records it did not create. The labels mark the object as ours, and an ownerReference makes
Kubernetes delete it (and external-dns the records) with the SmtpServer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .records import Record

API_VERSION = "externaldns.k8s.io/v1alpha1"
KIND = "DNSEndpoint"
MANAGED_BY = "smtp-infra"
OWNER_LABEL = "smtpinfra.com/smtp-server"


def dns_endpoint_name(server_name: str) -> str:
    """metadata.name of the DNSEndpoint of SmtpServer `server_name`."""
    return f"{server_name}-dns"[:253]


def _targets(record: Record) -> list[str]:
    if record.rtype == "MX":
        # external-dns writes MX targets as "<preference> <host>" without the trailing dot
        return [" ".join((p, h.rstrip("."))) for p, h in (v.split(None, 1) for v in record.values)]
    return record.targets()


def build_dns_endpoint(
    owner: str,
    records: Iterable[Record],
    *,
    owner_uid: str | None = None,
    owner_api_version: str = "smtpinfra.com/v1alpha1",
    owner_kind: str = "SmtpServer",
) -> dict[str, Any]:
    """The DNSEndpoint for `owner` ("namespace/name") publishing `records`.

    TXT targets are the joined text: external-dns providers split long values themselves.
    """
    namespace, _, name = owner.partition("/")
    metadata: dict[str, Any] = {
        "name": dns_endpoint_name(name),
        "namespace": namespace,
        "labels": {
            "app.kubernetes.io/managed-by": MANAGED_BY,
            OWNER_LABEL: name,
        },
    }
    if owner_uid:
        metadata["ownerReferences"] = [{
            "apiVersion": owner_api_version, "kind": owner_kind, "name": name, "uid": owner_uid,
            "controller": True, "blockOwnerDeletion": True,
        }]
    endpoints = [
        {
            "dnsName": r.name,
            "recordType": r.rtype,
            "targets": _targets(r),
            "recordTTL": r.ttl,
            "labels": {OWNER_LABEL: name},
        }
        for r in sorted(records)
    ]
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": {"endpoints": endpoints}}
