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

from .. import kube, tenancy, usage
from ..builders import tenant as build
from ..builders.keys import generate_password
from ..conditions import FALSE, TRUE, Outcome, get_condition
from ..kicker import Kicker, Locks
from ..statuswriter import publish
from . import pending as campaigns

log = logging.getLogger(__name__)
_locks: Locks[str] = Locks()
PASSWORD_SCHEME: Scheme = "hmac-sha256"
"""Generated passwords carry 190 random bits, so a salted HMAC protects them as well as scrypt would
(see smtpinfra_mta.passwords) at a microsecond a hash; scrypt's ~50 ms and 16 MiB each made a bulk
apply of tenants queue behind one hashing thread. Secrets hashed with scrypt earlier stay as they are."""


async def _claim_namespace(facts: tenancy.TenantFacts, everyone: list[tenancy.TenantFacts],
                           spec: TenantSpec) -> tenancy.NamespaceUse | tenancy.Refusal:
    """Decide on the namespace (`tenancy.namespace_claim`) and create it when it is absent.

    Decided from the informer; when the create finds the namespace exists after all (made
    meanwhile, or not seen yet), the decision is taken again on what exists, so nothing is ever
    written into a namespace the tenant may not use. An owned namespace gets its label back.
    """
    operator_ns = tenancy.operator_namespace()
    existing = await kube.find_cached("v1", "Namespace", facts.namespace)
    claim = tenancy.namespace_claim(facts, existing, everyone, operator_ns)
    if claim == "create":
        existing = await kube.create(build.namespace(facts.name, facts.uid, spec))
        if existing is None:
            return "create"
        claim = tenancy.namespace_claim(facts, existing, everyone, operator_ns)
    if claim == "owned" and ((existing or {}).get("metadata", {}).get("labels") or {}).get(
            build.TENANT_LABEL) != facts.name:
        await kube.apply({"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": facts.namespace, "labels": {build.TENANT_LABEL: facts.name}}})
    return claim


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
        namespace = build.namespace_name(name, spec)
        facts = tenancy.facts_of(body)
        assert facts is not None  # live, and its spec validated above
        everyone = [f for f in tenancy.all_facts(await kube.list_cached(API_VERSION, "Tenant")) if f.name != name]
        everyone = sorted([*everyone, facts], key=lambda f: f.order)  # this one as read, even if the list trails
        domains = tenancy.domain_conflicts(everyone).get(name, tenancy.DomainVerdict())
        exclusive = _exclusive_condition(domains)
        try:
            claim = await _claim_namespace(facts, everyone, spec)
            if isinstance(claim, tenancy.Refusal):
                await _publish(body, Outcome(ready=FALSE, reason=claim.reason, stalled=True,
                                             message=f"{claim.message}: nothing is written there",
                                             extra_conditions=(exclusive,)))
                return
            if not await _has_credentials(namespace):
                await _ensure_credentials(name, facts.uid, spec)
                if seen is None:  # e.g. deleted by hand and made again on a resync: servers render the new hash
                    await _kick_servers(body["metadata"].get("labels"))
        except kube.Paused:  # another replica took over: nothing more is written here
            raise
        except kube.ApiException as error:
            await _publish(body, Outcome(ready=FALSE, reason="ApplyFailed", reconciling=True,
                                         message=f"could not create namespace {namespace} or its "
                                                 f"credentials: {error.reason}"))
            return
        secret = await kube.find_cached("v1", "Secret", build.CREDENTIALS_SECRET, namespace,
                                        label_selector=build.TENANT_LABEL)
        credentials = (tenancy.check_credentials(name, secret) if secret is not None
                       and tenancy.secret_belongs(secret, name) else tenancy.Credentials(problem=tenancy.Refusal(
                           "InvalidCredentials", f"Secret {build.CREDENTIALS_SECRET} in namespace {namespace} "
                                                 f"is not labelled {build.TENANT_LABEL}={name}")))
        status = body.get("status") or {}
        fields: dict[str, Any] = {"namespace": namespace, "credentialsSecret": build.CREDENTIALS_SECRET,
                                  "state": "Suspended" if spec.suspended else "Active"}
        tenant_usage = usage.tenant_usage(name, body["metadata"].get("labels") or {}, spec, usage.latest(),
                                          status.get("usage"))
        rates, suspended = campaigns.assess_tenant(body, spec)
        if suspended[1] == TRUE:
            fields["state"] = "Suspended"
        if tenant_usage is not None:
            fields["usage"] = {**tenant_usage, **rates}
        if credentials.problem is not None:
            outcome = Outcome(ready=FALSE, reason=credentials.problem.reason, stalled=True, fields=fields,
                              message=f"not served: {credentials.problem.message}",
                              extra_conditions=(exclusive, suspended))
        elif domains.with_older:
            outcome = Outcome(ready=FALSE, reason="SenderDomainConflict", stalled=True, fields=fields,
                              message="not served: " + tenancy.describe_overlaps(domains.with_older),
                              extra_conditions=(exclusive, suspended))
        else:
            message = (f"Namespace {namespace} and Secret {build.CREDENTIALS_SECRET} ready"
                       + ("; the tenant is suspended" if spec.suspended else "")
                       + ("; newer tenants are refused: " + tenancy.describe_overlaps(domains.with_newer)
                          if domains.with_newer else ""))
            outcome = Outcome(ready=TRUE, reason="CredentialsReady", message=message, fields=fields,
                              extra_conditions=(exclusive, suspended))
        await _publish(body, outcome)
        if await campaigns.tenant_assessed(body, spec, suspended):
            await _kick_servers(body["metadata"].get("labels"))  # the MTA refuses (or serves again) its mail


SENDER_DOMAINS_EXCLUSIVE = "SenderDomainsExclusive"
"""Tenant condition: False when a sender domain overlaps another tenant's (on both tenants)."""


def _exclusive_condition(domains: tenancy.DomainVerdict) -> tuple[str, str, str, str]:
    if domains.with_older:
        return (SENDER_DOMAINS_EXCLUSIVE, FALSE, "OverlapsOlderTenant",
                tenancy.describe_overlaps(domains.with_older) + "; this tenant is not served")
    if domains.with_newer:
        return (SENDER_DOMAINS_EXCLUSIVE, FALSE, "OverlapsNewerTenant",
                tenancy.describe_overlaps(domains.with_newer) + "; this tenant keeps them, the newer is not served")
    return (SENDER_DOMAINS_EXCLUSIVE, TRUE, "NoOverlap", "no sender domain overlaps another tenant's")


async def _publish(body: Mapping[str, Any], outcome: Outcome) -> None:
    """Publish; a change of Ready's reason can change what servers serve, so they re-render."""
    before = get_condition(body.get("status") or {}, "Ready")
    await publish(Tenant, body, outcome)
    if before is not None and (before.get("reason"), before.get("status")) != (outcome.reason, outcome.ready):
        await _kick_servers(body["metadata"].get("labels"))


def _refused_for_another(body: Mapping[str, Any]) -> bool:
    """Whether a Tenant's status says another tenant decides its state (then it is re-decided when one changes)."""
    status = body.get("status") or {}
    exclusive = get_condition(status, SENDER_DOMAINS_EXCLUSIVE)
    ready = get_condition(status, "Ready")
    return (exclusive is not None and exclusive.get("status") == FALSE) or \
        (ready is not None and ready.get("reason") == "NamespaceOwnedByAnotherTenant")


async def _kick_related(name: str) -> None:
    """Re-decide the tenants whose verdict this one's appearance, change or removal can change: those
    whose domains overlap it now, and those refused or noted because of some other tenant."""
    bodies = await kube.list_cached(API_VERSION, "Tenant")
    verdict = tenancy.domain_conflicts(tenancy.all_facts(bodies)).get(name, tenancy.DomainVerdict())
    related = {o.other for o in verdict.with_older + verdict.with_newer}
    related.update(b["metadata"]["name"] for b in bodies if _refused_for_another(b))
    for other in sorted(related - {name}):
        tenant_kicker.kick(other)


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
        await _kick_related(name)
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
    if before is None or before[0] != state[0]:
        await _kick_related(name)


tenant_kicker: Kicker[str] = Kicker(reconcile_tenant)
