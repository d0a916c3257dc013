"""Tenant: its namespace and SMTP credentials Secret, its usage; the servers that serve it re-render."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pydantic import ValidationError

from smtpinfra_api.meta import API_VERSION
from smtpinfra_api.v1alpha1 import Tenant, TenantSpec
from smtpinfra_kube import ApiException, Paused
from smtpinfra_mta.config import Scheme, hash_password

from .. import tenancy
from ..builders import tenant as build
from ..builders.keys import generate_password
from ..conditions import FALSE, TRUE, Outcome, get_condition
from ..controller import Controller, Deps
from ..kicker import Locks
from ..tenant_index import TenantIndex
from ..usage import Snapshot, tenant_usage

log = logging.getLogger(__name__)
PASSWORD_SCHEME: Scheme = "hmac-sha256"
"""Generated passwords carry 190 random bits, so a salted HMAC protects them as well as scrypt would
(see smtpinfra_mta.passwords) at a microsecond a hash; scrypt's ~50 ms and 16 MiB each made a bulk
apply of tenants queue behind one hashing thread. Secrets hashed with scrypt earlier stay as they are."""


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


def refused_for_another(body: Mapping[str, Any]) -> bool:
    """Whether a Tenant's status says another tenant decides its state (then it is re-decided when one changes)."""
    status = body.get("status") or {}
    exclusive = get_condition(status, SENDER_DOMAINS_EXCLUSIVE)
    ready = get_condition(status, "Ready")
    return (exclusive is not None and exclusive.get("status") == FALSE) or \
        (ready is not None and ready.get("reason") == "NamespaceOwnedByAnotherTenant")


def _may_serve(server: Mapping[str, Any], labels: list[dict[str, str]]) -> bool:
    """Whether a server's tenantSelector matches any of the tenant's label sets (old or new)."""
    wanted = (((server.get("spec") or {}).get("tenantSelector") or {}).get("matchLabels") or {})
    return any(all(have.get(k) == v for k, v in wanted.items()) for have in labels)



class TenantSuspension(Protocol):
    """What a Tenant's reconcile asks of the campaigns side (`controllers.campaign.CampaignQueue`)."""

    def assess_tenant(self, body: Mapping[str, Any], spec: TenantSpec
                      ) -> tuple[dict[str, str], tuple[str, str, str, str]]: ...

    async def tenant_assessed(self, body: Mapping[str, Any], spec: TenantSpec,
                              condition: tuple[str, str, str, str]) -> bool: ...


class TenantController(Controller[str]):
    """Keys are tenant names; the servers that serve a tenant re-render through their own queue."""

    kind = "Tenant"
    CONCURRENCY = 32
    """As many as Kopf ran the Tenant's event handler with when it reconciled inline (a bulk apply of
    1,000 tenants is mostly waiting for creates of namespaces and Secrets)."""

    def __init__(self, deps: Deps, index: TenantIndex, kick_server: Callable[[tuple[str, str]], None],
                 usage: Callable[[], Snapshot | None], campaigns: TenantSuspension) -> None:
        super().__init__(deps)
        self.index = index
        """Every Tenant's facts by domain and namespace, fed by the Tenant informer (`Runtime.start`)."""
        self._kick_server = kick_server
        self._usage = usage
        self._campaigns = campaigns
        """Suspension by complaint and bounce rates, and the tenant's campaigns (`CampaignQueue`)."""
        self._locks: Locks[str] = Locks()
        self._seen: dict[str, tuple[int | None, tuple[tuple[str, str], ...]]] = {}
        """Per Tenant, the generation and labels of its last event worth a reconcile."""
        self._follow: dict[str, tuple[dict[str, str] | None, bool]] = {}
        """Per Tenant, what its next reconcile kicks after it ran: servers that selected its labels
        before the change, and whether tenants related by domains or namespaces are re-decided."""

    def on_event(self, name: str, body: Mapping[str, Any], type_: str | None) -> None:
        """A tenant appeared, changed its spec or labels (which servers serve it), or went away: a key.

        Watched without Kopf's change handlers: those keep a copy of every object's spec in its
        status (`status.kopf`), one more status write and watch event per Tenant, and we can tell a
        change from our own status writes by `metadata.generation` and the labels. Startup lists
        every Tenant (type None), which puts each on the queue once.
        """
        meta = body.get("metadata") or {}
        labels = dict(meta.get("labels") or {})
        if type_ == "DELETED":
            self._seen.pop(name, None)
            self._follow.pop(name, None)
            asyncio.get_running_loop().create_task(self._after_delete(name, labels))
            return
        state = (meta.get("generation"), tuple(sorted(labels.items())))
        before = self._seen.get(name)
        if before == state:
            return  # our status write, or metadata we do not read
        self._seen[name] = state
        self.kube.remember(copy.deepcopy(dict(body)))  # the reconcile reads it from the informer, no GET
        old_labels, related = self._follow.get(name, (None, False))
        self._follow[name] = (old_labels if old_labels is not None else
                              (dict(before[1]) if before is not None else None),
                              related or before is None or before[0] != state[0])
        self.kick(name, delay=0.0)

    async def _after_delete(self, name: str, labels: dict[str, str]) -> None:
        await self._kick_servers(labels)  # the namespace goes with the Tenant (ownerReference)
        await self._kick_related(name)

    async def reconcile(self, key: str) -> None:
        """Reconcile one tenant, then kick what its event asked to follow (servers, related tenants)."""
        follow = self._follow.get(key)
        await self._reconcile(key)
        if follow is not None and self._follow.get(key) == follow:
            del self._follow[key]
            seen = self._seen.get(key)
            labels = dict(seen[1]) if seen is not None else None
            await self._kick_servers(labels, follow[0])
            if follow[1]:
                await self._kick_related(key)

    async def _claim_namespace(self, facts: tenancy.TenantFacts, claimants: list[tenancy.TenantFacts],
                               spec: TenantSpec) -> tenancy.NamespaceUse | tenancy.Refusal:
        """Decide on the namespace (`tenancy.namespace_claim`) and create it when it is absent.

        Decided from the informer; when the create finds the namespace exists after all (made
        meanwhile, or not seen yet), the decision is taken again on what exists, so nothing is ever
        written into a namespace the tenant may not use. An owned namespace gets its label back.
        """
        operator_ns = tenancy.operator_namespace()
        existing = await self.kube.find_cached("v1", "Namespace", facts.namespace)
        claim = tenancy.namespace_claim(facts, existing, claimants, operator_ns)
        if claim == "create":
            existing = await self.kube.create(build.namespace(facts.name, facts.uid, spec))
            if existing is None:
                return "create"
            claim = tenancy.namespace_claim(facts, existing, claimants, operator_ns)
        if claim == "owned" and ((existing or {}).get("metadata", {}).get("labels") or {}).get(
                build.TENANT_LABEL) != facts.name:
            await self.kube.apply({"apiVersion": "v1", "kind": "Namespace",
                              "metadata": {"name": facts.namespace, "labels": {build.TENANT_LABEL: facts.name}}})
        return claim


    async def _has_credentials(self, namespace: str) -> bool:
        """Whether the credentials Secret exists, as the tenant-Secret informer sees it (no request)."""
        found = await self.kube.find_cached("v1", "Secret", build.CREDENTIALS_SECRET, namespace,
                                       label_selector=build.TENANT_LABEL)
        return found is not None


    async def _ensure_credentials(self, name: str, uid: str, spec: TenantSpec) -> None:
        """Generate the SMTP password once; an existing Secret is never rewritten (no silent rotation).

        The hash is computed only when the Secret is missing from the informer, and the create
        refuses to replace a Secret the informer had not seen yet (409), so a tenant is hashed once.
        """
        password = generate_password()
        password_hash = hash_password(password, PASSWORD_SCHEME)
        await self.kube.create(build.credentials_secret(name, uid, spec, password, password_hash))


    async def _reconcile(self, name: str) -> None:
        """Namespace, credentials, usage and status of one tenant.

        The Tenant comes from the informer (a resync of an unchanged tenant costs no request); a
        cached copy older than the tenant's last event (generation, labels) is re-read.
        """
        async with self._locks(name):
            seen = self._seen.get(name)
            body = await self.kube.get_cached(API_VERSION, "Tenant", name,
                                              generation=seen[0] if seen is not None else None,
                                              labels=dict(seen[1]) if seen is not None else None)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            try:
                spec = TenantSpec.model_validate(body.get("spec") or {})
            except ValidationError as error:
                await self.deps.status.publish(Tenant, body, Outcome(ready=FALSE, reason="InvalidSpec",
                                                                     message=str(error), stalled=True))
                return
            namespace = build.namespace_name(name, spec)
            facts = tenancy.facts_of(body)
            assert facts is not None  # live, and its spec validated above
            index = await self._index()
            domains = index.verdict(facts)  # this one as read, even if the informer trails
            exclusive = _exclusive_condition(domains)
            try:
                claim = await self._claim_namespace(facts, index.claimants(facts.namespace), spec)
                if isinstance(claim, tenancy.Refusal):
                    await self._publish(body, Outcome(ready=FALSE, reason=claim.reason, stalled=True,
                                                 message=f"{claim.message}: nothing is written there",
                                                 extra_conditions=(exclusive,)))
                    return
                if not await self._has_credentials(namespace):
                    await self._ensure_credentials(name, facts.uid, spec)
                    if name not in self._follow:  # e.g. deleted by hand and made again on a resync:
                        await self._kick_servers(body["metadata"].get("labels"))
            except Paused:  # another replica took over: nothing more is written here
                raise
            except ApiException as error:
                await self._publish(body, Outcome(ready=FALSE, reason="ApplyFailed", reconciling=True,
                                             message=f"could not create namespace {namespace} or its "
                                                     f"credentials: {error.reason}"))
                return
            secret = await self.kube.find_cached("v1", "Secret", build.CREDENTIALS_SECRET, namespace,
                                            label_selector=build.TENANT_LABEL)
            credentials = (tenancy.check_credentials(name, secret) if secret is not None
                           and tenancy.secret_belongs(secret, name) else tenancy.Credentials(problem=tenancy.Refusal(
                               "InvalidCredentials", f"Secret {build.CREDENTIALS_SECRET} in namespace {namespace} "
                                                     f"is not labelled {build.TENANT_LABEL}={name}")))
            status = body.get("status") or {}
            fields: dict[str, Any] = {"namespace": namespace, "credentialsSecret": build.CREDENTIALS_SECRET,
                                      "state": "Suspended" if spec.suspended else "Active"}
            used = tenant_usage(name, body["metadata"].get("labels") or {}, spec, self._usage(), status.get("usage"))
            rates, suspended = self._campaigns.assess_tenant(body, spec)
            if suspended[1] == TRUE:
                fields["state"] = "Suspended"
            if used is not None:
                fields["usage"] = {**used, **rates}
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
            await self._publish(body, outcome)
            if await self._campaigns.tenant_assessed(body, spec, suspended):
                await self._kick_servers(body["metadata"].get("labels"))  # the MTA refuses (or serves again) its mail


    async def _publish(self, body: Mapping[str, Any], outcome: Outcome) -> None:
        """Publish; a change of Ready's reason can change what servers serve, so they re-render."""
        before = get_condition(body.get("status") or {}, "Ready")
        await self.deps.status.publish(Tenant, body, outcome)
        if before is not None and (before.get("reason"), before.get("status")) != (outcome.reason, outcome.ready):
            await self._kick_servers(body["metadata"].get("labels"))


    async def _kick_related(self, name: str) -> None:
        """Re-decide the tenants whose verdict this one's appearance, change or removal can change: those
        whose domains overlap it now, and those refused or noted because of some other tenant."""
        for other in sorted((await self._index()).related(name)):
            self.kick(other)

    async def _index(self) -> TenantIndex:
        """The index, complete (`TenantIndex.complete`)."""
        bodies = await self.kube.list_cached(API_VERSION, "Tenant")  # waits for the informer's first list
        return self.index.complete(bodies, self.kube.informer(API_VERSION, "Tenant").has_synced())


    async def _kick_servers(self, *labels: Mapping[str, str] | None) -> None:
        """Kick the servers whose config can change with this tenant: those selecting its old or new labels.

        Kicking every server for every tenant event made a burst of N tenants cost N x servers
        reconciles; a server that selects neither label set renders the same config either way.
        """
        label_sets = [dict(ls or {}) for ls in labels]
        for server in await self.kube.list_cached(API_VERSION, "SmtpServer"):
            if _may_serve(server, label_sets):
                self._kick_server((server["metadata"]["namespace"], server["metadata"]["name"]))
