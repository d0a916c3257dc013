"""SmtpServer gathering: read and check every reference, and create the Secrets generated once.

Reads come from the informers (`list_cached`, `find_cached`, `get_known`); the only writes are
of objects generated once and never rewritten (DKIM keys, the /stats token, the VERP key, the
cert-manager Certificate), made before the config that needs them is rendered.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from typing import Any

from pydantic import ValidationError

from smtpinfra_api.meta import API_VERSION
from smtpinfra_api.v1alpha1 import SmtpServerSpec, TenantSpec
from smtpinfra_kube import KubeApi

from ... import tenancy
from ...builders import tenant as tenant_build
from ...builders import unsubscribe, verp, workload
from ...builders.assignment import ReplicaKey
from ...builders.mtaconfig import ServedTenant, ServerInputs, SourceAddress
from ...campaigns.suspension import suspended_reason
from ...dkimkeys import DkimKeys
from ...tenant_index import TenantIndex
from ..ippool import IpPoolController, source_address
from .decide import Gathered, MissingReference, selected

log = logging.getLogger(__name__)


class ServerGatherer:
    """What one SmtpServer reconcile reads, through the given client and the pools' controller."""

    def __init__(self, kube: KubeApi, pools: IpPoolController, tenants: TenantIndex, keys: DkimKeys) -> None:
        self.keys = keys
        self.kube = kube
        self.pools = pools
        self.tenants = tenants

    async def _gather_tenants(self, spec: SmtpServerSpec) -> tuple[list[ServedTenant], dict[str, str], list[str]]:
        """Tenants this server serves, their `username:hash` lines, and the tenants left out for a conflict.

        Only what `tenancy` allows is served, the same decisions each Tenant's Ready shows: a tenant
        whose sender domain overlaps an older tenant's (else it could send as the other), whose
        namespace it may not use, or whose credentials Secret fails the check is left out, rather
        than the whole server failing to render. Tenants still without credentials wait.
        """
        served: list[ServedTenant] = []
        credentials: dict[str, str] = {}
        conflicts: list[str] = []
        # Read by name from the informer once it has listed (a dict of every tenant's Secret per
        # reconcile was most of this function's time with 1,000 tenants); until then from its list.
        secret_informer = self.kube.informer("v1", "Secret", label_selector=tenant_build.TENANT_LABEL)
        listed_secrets: dict[tuple[str, str], dict[str, Any]] | None = None
        if not secret_informer.has_synced():
            listed_secrets = {
                (s["metadata"]["namespace"], s["metadata"]["name"]): s
                for s in await self.kube.list_cached("v1", "Secret", label_selector=tenant_build.TENANT_LABEL)
            }
        listed = await self.kube.list_cached(API_VERSION, "Tenant")
        index = self.tenants.complete(listed, self.kube.informer(API_VERSION, "Tenant").has_synced())
        bodies = {t["metadata"]["name"]: t for t in listed if selected(spec, t)}
        operator_ns = tenancy.operator_namespace()
        for facts in tenancy.all_facts(bodies.values()):
            name, body = facts.name, bodies[facts.name]
            try:
                tspec = TenantSpec.model_validate(body.get("spec") or {})
            except ValidationError:
                continue
            if tspec.ip_pool and tspec.ip_pool not in spec.ip_pools:
                continue  # a dedicated pool this server does not send from
            older = index.verdict(facts).with_older
            if older:
                conflicts.append(f"Tenant {name} is not served: " + tenancy.describe_overlaps(older))
                continue
            namespace = await self.kube.find_cached("v1", "Namespace", facts.namespace)
            if tenancy.namespace_claim(facts, namespace, index.claimants(facts.namespace),
                                       operator_ns) not in ("owned", "adopted"):
                continue
            secret = (secret_informer.get(facts.namespace, tenant_build.CREDENTIALS_SECRET) if listed_secrets is None
                      else listed_secrets.get((facts.namespace, tenant_build.CREDENTIALS_SECRET)))
            if secret is None or not tenancy.secret_belongs(secret, name):
                continue
            checked = tenancy.check_credentials(name, secret)
            if checked.line is None:
                continue
            served.append(ServedTenant(name=name, spec=tspec, pool=tspec.ip_pool or spec.ip_pools[0],
                                       suspended_reason=suspended_reason(body)))
            credentials[name] = checked.line
        return served, credentials, conflicts


    async def _gather_tls(self, owner: workload.Owner, spec: SmtpServerSpec) -> str | None:
        if spec.tls is None:
            return None
        if spec.tls.secret_name:
            if await self.kube.get_known("v1", "Secret", spec.tls.secret_name, owner.namespace) is None:
                raise MissingReference("TlsSecretNotFound",
                                       f"Secret {owner.namespace}/{spec.tls.secret_name} (spec.tls.secretName) "
                                       "not found")
            return spec.tls.secret_name
        issuer = spec.tls.issuer_ref
        assert issuer is not None
        if not await self.kube.kind_exists("cert-manager.io/v1", "Certificate"):
            raise MissingReference("CertManagerNotInstalled",
                                   f"spec.tls.issuerRef names {issuer.kind.value} {issuer.name}, but cert-manager's "
                                   "Certificate kind is not installed")
        issuer_ns = owner.namespace if issuer.kind.value == "Issuer" else None
        if await self.kube.get("cert-manager.io/v1", issuer.kind.value, issuer.name, issuer_ns) is None:
            raise MissingReference("IssuerNotFound",
                                   f"{issuer.kind.value} {issuer.name} (spec.tls.issuerRef) not found")
        secret_name = f"{owner.name}-tls"
        await self.kube.apply(workload.certificate(owner, spec, secret_name))
        if await self.kube.get_known("v1", "Secret", secret_name, owner.namespace) is None:
            raise MissingReference("CertificatePending", f"waiting for cert-manager to issue Secret {secret_name}")
        return secret_name


    async def _ensure_dkim(self, owner: workload.Owner, spec: SmtpServerSpec) -> None:
        """Generate each missing DKIM key once (openssl, off the event loop); explicit Secrets must exist."""
        for key in spec.dkim.keys:
            name = workload.dkim_secret_name(owner.name, key)
            if key.secret_name:
                if await self.kube.get_known("v1", "Secret", name, owner.namespace) is None:
                    raise MissingReference("DkimSecretNotFound",
                                           f"Secret {owner.namespace}/{name} for DKIM {key.selector}._domainkey."
                                           f"{key.domain} not found")
                continue
            if await self.kube.get_known("v1", "Secret", name, owner.namespace) is None:
                private, dns_value = await self.keys.generate(key.algorithm, key.rsa_key_size or 2048)
                if await self.kube.create(workload.dkim_secret(owner, key, private, dns_value)) is None:
                    log.info("generated DKIM key %s._domainkey.%s", key.selector, key.domain)


    async def _ensure_stats_token(self, owner: workload.Owner) -> None:
        """Create the server's token Secret once (never rewritten; delete it to rotate both tokens).

        A Secret made before the replicas handed each other mail has no ``handoff`` key: it gets one, once.
        """
        name = workload.stats_token_secret_name(owner.name)
        found = await self.kube.get_known("v1", "Secret", name, owner.namespace)
        if found is None:
            await self.kube.create(workload.stats_token_secret(owner, secrets.token_urlsafe(32),
                                                               secrets.token_urlsafe(32)))
        elif "handoff" not in (found.get("data") or {}):
            token = base64.b64encode(secrets.token_urlsafe(32).encode()).decode()
            await self.kube.apply({"apiVersion": "v1", "kind": "Secret",
                                   "metadata": {"name": name, "namespace": owner.namespace},
                                   "data": {"handoff": token}})


    async def _ensure_verp(self, owner: workload.Owner) -> None:
        """Create the server's VERP key Secret once; rotation (``smtp-infra verp rotate``) edits it, we never do."""
        name = verp.secret_name(owner.name)
        if await self.kube.get_known("v1", "Secret", name, owner.namespace) is None and \
                await self.kube.create(verp.secret(owner, workload.labels(owner.name), verp.new_key())) is None:
            log.info("generated VERP key Secret %s/%s", owner.namespace, name)

    async def _ensure_unsubscribe(self, owner: workload.Owner) -> None:
        """The unsubscribe links' key Secret, by the same once-only rule as the VERP key."""
        name = unsubscribe.secret_name(owner.name)
        if await self.kube.get_known("v1", "Secret", name, owner.namespace) is None and \
                await self.kube.create(unsubscribe.secret(owner, workload.labels(owner.name),
                                                          unsubscribe.new_key())) is None:
            log.info("generated unsubscribe key Secret %s/%s", owner.namespace, name)


    async def gather(self, owner: workload.Owner, spec: SmtpServerSpec) -> Gathered:
        """Read and check every reference; raises MissingReference naming the first missing one."""
        addresses: dict[int, list[SourceAddress]] = {i: [] for i in range(spec.replicas)}
        shortfall: list[str] = []
        for pool_name in spec.ip_pools:
            state = await self.pools.read_pool(pool_name, (owner.namespace, owner.name, spec.replicas))
            if state is None:
                raise MissingReference("IpPoolNotFound", f"IpPool {pool_name} (spec.ipPools) not found")
            self.pools.note_view(state, owner.namespace, owner.name, spec.replicas)
            if state.problem is not None:
                raise MissingReference(state.problem.reason, f"IpPool {pool_name}: {state.problem.message}")
            for ordinal in range(spec.replicas):
                address = state.assignment.address_of(ReplicaKey(owner.namespace, owner.name, ordinal))
                if address is None:
                    shortfall.append(f"IpPool {pool_name} has no free address for replica {ordinal}")
                    addresses.pop(ordinal, None)
                    continue
                if ordinal in addresses:
                    addresses[ordinal].append(source_address(state, pool_name, address))
        # Only a contiguous prefix of ordinals can run in a StatefulSet.
        replicas = 0
        while replicas in addresses:
            replicas += 1
        runnable = {i: addresses[i] for i in range(replicas)}
        tls_secret = await self._gather_tls(owner, spec)
        # The generated Secrets are independent creates: a new server's four, one after another,
        # were four API round trips on the way to its StatefulSet.
        made = await asyncio.gather(self._ensure_dkim(owner, spec), self._ensure_stats_token(owner),
                                    self._ensure_verp(owner), self._ensure_unsubscribe(owner),
                                    return_exceptions=True)
        if failed := next((m for m in made if isinstance(m, BaseException)), None):
            raise failed
        tenants, credentials, conflicts = await self._gather_tenants(spec)
        inputs = ServerInputs(name=owner.name, namespace=owner.namespace, spec=spec, tenants=tenants,
                              replica_addresses=runnable)
        return Gathered(inputs=inputs, credentials=credentials, tls_secret=tls_secret, replicas=replicas,
                        pool_shortfall=shortfall, tenant_conflicts=conflicts, served=len(tenants))
