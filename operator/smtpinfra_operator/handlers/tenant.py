"""Tenant: its namespace and SMTP credentials Secret, its usage; the servers that serve it re-render."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from smtpinfra_api.meta import API_VERSION, GROUP, VERSION
from smtpinfra_api.v1alpha1 import Tenant, TenantSpec
from smtpinfra_mta.config import Scheme, hash_password

from .. import kube, usage
from ..builders import tenant as build
from ..builders.keys import generate_password
from ..conditions import FALSE, TRUE, Outcome
from ..kicker import Kicker, Locks
from ..statuswriter import publish

log = logging.getLogger(__name__)
_locks: Locks[str] = Locks()
PASSWORD_SCHEME: Scheme = "hmac-sha256"
"""Generated passwords carry 190 random bits, so a salted HMAC protects them as well as scrypt would
(see smtpinfra_mta.passwords) at a microsecond a hash; scrypt's ~50 ms and 16 MiB each made a bulk
apply of tenants queue behind one hashing thread. Secrets hashed with scrypt earlier stay as they are."""


async def _ensure_namespace(name: str, uid: str, spec: TenantSpec) -> None:
    """Create the namespace owned by the Tenant; a namespace that already existed is only labelled.

    Owning a pre-existing namespace would make deleting the Tenant delete someone else's objects.
    Created first and read only when it exists, so a new tenant costs one request here.
    """
    wanted = build.namespace(name, uid, spec)
    existing = await kube.create(wanted)
    if existing is None:
        return
    if (existing["metadata"].get("labels") or {}).get(build.TENANT_LABEL) != name:
        await kube.apply({"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": wanted["metadata"]["name"],
                                       "labels": {build.TENANT_LABEL: name}}})


async def _has_credentials(namespace: str) -> bool:
    """Whether the credentials Secret exists, as the tenant-Secret informer sees it (no request)."""
    found = await kube.find_cached("v1", "Secret", build.CREDENTIALS_SECRET, namespace,
                                   label_selector=build.TENANT_LABEL)
    return found is not None


async def _ensure_credentials(name: str, uid: str, spec: TenantSpec) -> None:
    """Generate the SMTP password once; an existing Secret is never rewritten (no silent rotation).

    The hash is computed only when the Secret is missing from the informer, and the create
    refuses to replace a Secret the informer had not seen yet (409), so a tenant is hashed once.
    """
    password = generate_password()
    password_hash = hash_password(password, PASSWORD_SCHEME)
    await kube.create(build.credentials_secret(name, uid, spec, password, password_hash))


async def reconcile_tenant(name: str, seen: Mapping[str, Any] | None = None) -> None:
    """Namespace, credentials, usage and status of one tenant.

    The Tenant comes from the informer (a resync of an unchanged tenant costs no request);
    `seen` is the object of the event that asked, and a cached copy older than it is re-read.
    """
    async with _locks(name):
        meta = (seen or {}).get("metadata") or {}
        body = await kube.get_cached(API_VERSION, "Tenant", name, generation=meta.get("generation"),
                                     labels=dict(meta.get("labels") or {}) if seen is not None else None)
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
            if not await _has_credentials(namespace):  # a Secret in the namespace implies the namespace
                await _ensure_namespace(name, uid, spec)
                await _ensure_credentials(name, uid, spec)
                if seen is None:  # e.g. deleted by hand and made again on a resync: servers render the new hash
                    await _kick_servers(body["metadata"].get("labels"))
        except kube.ApiException as error:
            await publish(Tenant, body, Outcome(ready=FALSE, reason="ApplyFailed", reconciling=True,
                                                message=f"could not create namespace {namespace} or its "
                                                        f"credentials: {error.reason}"))
            return
        status = body.get("status") or {}
        fields: dict[str, Any] = {"namespace": namespace, "credentialsSecret": build.CREDENTIALS_SECRET,
                                  "state": "Suspended" if spec.suspended else "Active"}
        tenant_usage = usage.tenant_usage(name, body["metadata"].get("labels") or {}, spec, usage.latest(),
                                          status.get("usage"))
        if tenant_usage is not None:
            fields["usage"] = tenant_usage
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


_seen: dict[str, tuple[int | None, tuple[tuple[str, str], ...]]] = {}
"""Per Tenant, the generation and labels last acted on: what makes an event worth a reconcile."""


@kopf.on.event(GROUP, VERSION, Tenant.plural, id="on_tenant")
async def on_tenant_event(name: str, body: kopf.Body, type: str | None, **_: Any) -> None:
    """A tenant appeared, changed its spec or labels (which servers serve it), or went away.

    Watched without Kopf's change handlers: those keep a copy of every object's spec in its
    status (`status.kopf`), one more status write and watch event per Tenant, and we can tell a
    change from our own status writes by `metadata.generation` and the labels. Startup lists
    every Tenant (type None), which reconciles each once.
    """
    meta = body.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    if type == "DELETED":
        _seen.pop(name, None)
        await _kick_servers(labels)  # the namespace goes with the Tenant (ownerReference)
        return
    state = (meta.get("generation"), tuple(sorted(labels.items())))
    before = _seen.get(name)
    if before == state:
        return  # our status write, or metadata we do not read
    try:
        await reconcile_tenant(name, body)
    except Exception:  # the resync retries; an event handler is not retried by Kopf
        log.exception("reconcile of Tenant %s failed", name)
        tenant_kicker.kick(name)
        return
    _seen[name] = state
    await _kick_servers(labels, dict(before[1]) if before is not None else None)


tenant_kicker: Kicker[str] = Kicker(reconcile_tenant)
