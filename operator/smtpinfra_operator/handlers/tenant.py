"""Tenant: its namespace and SMTP credentials Secret; the servers that serve it re-render."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from pydantic import ValidationError

from smtpinfra_api.meta import API_VERSION, GROUP, VERSION
from smtpinfra_api.v1alpha1 import Tenant, TenantSpec
from smtpinfra_mta.passwords import hash_password

from .. import kube
from ..builders import tenant as build
from ..builders.keys import generate_password
from ..conditions import FALSE, TRUE, Outcome
from ..kicker import Kicker, Locks
from ..statuswriter import publish

log = logging.getLogger(__name__)
_locks: Locks[str] = Locks()
_hasher = ThreadPoolExecutor(1, thread_name_prefix="scrypt")
"""scrypt is CPU- and memory-hard (16 MiB a hash): one at a time caps the operator's memory, and
hashes run only once per tenant lifetime, so a burst of new tenants queues here, not in RAM."""


async def _ensure_namespace(name: str, uid: str, spec: TenantSpec) -> None:
    """Create the namespace owned by the Tenant; a namespace that already existed is only labelled.

    Owning a pre-existing namespace would make deleting the Tenant delete someone else's objects.
    """
    wanted = build.namespace(name, uid, spec)
    created, existing = await kube.create_if_absent(wanted)
    if created:
        return
    if (existing["metadata"].get("labels") or {}).get(build.TENANT_LABEL) != name:
        await kube.apply({"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": wanted["metadata"]["name"],
                                       "labels": {build.TENANT_LABEL: name}}})


async def _ensure_credentials(name: str, uid: str, spec: TenantSpec) -> None:
    """Generate the SMTP password once; an existing Secret is never rewritten (no silent rotation)."""
    namespace = build.namespace_name(name, spec)
    if await kube.get("v1", "Secret", build.CREDENTIALS_SECRET, namespace) is not None:
        return
    password = generate_password()
    password_hash = await asyncio.get_running_loop().run_in_executor(_hasher, hash_password, password)
    await kube.create_if_absent(build.credentials_secret(name, uid, spec, password, password_hash))


async def reconcile_tenant(name: str) -> None:
    """Namespace, credentials and status of one tenant."""
    async with _locks(name):
        body = await kube.get(API_VERSION, "Tenant", name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        try:
            spec = TenantSpec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            await publish(Tenant, body, Outcome(ready=FALSE, reason="InvalidSpec", message=str(error), stalled=True))
            return
        uid = body["metadata"]["uid"]
        namespace = build.namespace_name(name, spec)
        try:
            await _ensure_namespace(name, uid, spec)
            await _ensure_credentials(name, uid, spec)
        except kube.ApiException as error:
            await publish(Tenant, body, Outcome(ready=FALSE, reason="ApplyFailed", reconciling=True,
                                                message=f"could not create namespace {namespace} or its "
                                                        f"credentials: {error.reason}"))
            return
        previous = (body.get("status") or {}).get("usage")
        fields: dict[str, Any] = {"namespace": namespace, "credentialsSecret": build.CREDENTIALS_SECRET,
                                  "state": "Suspended" if spec.suspended else "Active"}
        if previous:
            fields["usage"] = previous
        message = (f"Namespace {namespace} and Secret {build.CREDENTIALS_SECRET} ready"
                   + ("; the tenant is suspended" if spec.suspended else ""))
        await publish(Tenant, body, Outcome(ready=TRUE, reason="CredentialsReady", message=message, fields=fields))


def _may_serve(server: Mapping[str, Any], labels: list[dict[str, str]]) -> bool:
    """Whether a server's tenantSelector matches any of the tenant's label sets (old or new)."""
    wanted = (((server.get("spec") or {}).get("tenantSelector") or {}).get("matchLabels") or {})
    return any(all(have.get(k) == v for k, v in wanted.items()) for have in labels)


async def _kick_servers(*labels: Mapping[str, str] | None) -> None:
    """Kick the servers whose config can change with this tenant: those selecting its old or new labels.

    Kicking every server for every tenant event made a burst of N tenants cost N x servers
    reconciles; a server that selects neither label set renders the same config either way.
    """
    from .smtpserver import server_kicker

    label_sets = [dict(ls or {}) for ls in labels]
    for server in await kube.list_cached(API_VERSION, "SmtpServer"):
        if _may_serve(server, label_sets):
            server_kicker.kick((server["metadata"]["namespace"], server["metadata"]["name"]))


@kopf.on.resume(GROUP, VERSION, Tenant.plural)
@kopf.on.create(GROUP, VERSION, Tenant.plural)
@kopf.on.update(GROUP, VERSION, Tenant.plural, field="spec")
@kopf.on.update(GROUP, VERSION, Tenant.plural, field="metadata.labels")
async def on_tenant(name: str, body: kopf.Body, old: Any = None, **_: Any) -> None:
    """A tenant appeared or changed (labels decide which servers serve it): servers re-render."""
    await reconcile_tenant(name)
    old_labels = ((old or {}).get("metadata") or {}).get("labels") if isinstance(old, Mapping) else None
    if isinstance(old, Mapping) and "metadata" not in old:  # a field handler's old is the field's value
        old_labels = dict(old) if all(isinstance(v, str) for v in old.values()) else None
    await _kick_servers(body.get("metadata", {}).get("labels"), old_labels)


@kopf.on.delete(GROUP, VERSION, Tenant.plural, optional=True)
async def on_tenant_deleted(name: str, body: kopf.Body, **_: Any) -> None:
    """The namespace goes with the Tenant (ownerReference); servers drop its entries."""
    await _kick_servers(body.get("metadata", {}).get("labels"))


tenant_kicker: Kicker[str] = Kicker(reconcile_tenant)
