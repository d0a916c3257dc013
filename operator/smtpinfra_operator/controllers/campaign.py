"""Campaign: the runtime's queue for `campaigns.CampaignController`, and the Tenant's suspension hooks.

The Campaign logic (gather → decide → Job → status) lives in `smtpinfra_operator.campaigns`; this
module gives it its place in the runtime: a queue that obeys the peering gate, the keys from
Kopf's watches of Campaigns and sender Jobs and from the resync, and what a Tenant's reconcile
asks of campaigns (is the tenant over its thresholds; pause or resume its campaigns).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from smtpinfra_api.meta import API_VERSION
from smtpinfra_api.v1alpha1 import TenantSpec
from smtpinfra_campaign.ledger import open_ledger
from smtpinfra_kube import Paused

from ..builders.tenant import namespace_name
from ..campaigns import erasure, suspension
from ..campaigns import job as build
from ..campaigns.api import ClusterApi
from ..campaigns.controller import CampaignController, Key
from ..campaigns.metrics import CampaignMetrics
from ..conditions import now_rfc3339
from ..controller import Controller, Deps
from ..usage import UsageCollector

log = logging.getLogger(__name__)


async def erase_from_ledger(dsn: str, address: str, campaigns: Sequence[str]) -> int:
    """Remove the address from the shared PostgreSQL ledger rows of `campaigns` (a connection per
    request: erasures are rare)."""
    def run() -> int:
        ledger = open_ledger(dsn)
        try:
            return ledger.erase(address, campaigns)
        finally:
            ledger.close()
    return await asyncio.to_thread(run)


class CampaignQueue(Controller[Key]):
    """Keys are (namespace, name) of Campaigns; the only writer of Campaign status."""

    kind = "Campaign"

    def __init__(self, deps: Deps, usage: UsageCollector, registry: CollectorRegistry) -> None:
        super().__init__(deps)
        self.campaign_metrics = CampaignMetrics(registry)
        self.campaigns = CampaignController(ClusterApi(deps.kube, deps.status, usage), clock=deps.clock.now,
                                            settings=build.settings_from_env(os.environ),
                                            metrics=self.campaign_metrics)
        self._usage = usage

    async def reconcile(self, key: Key) -> None:
        await self.campaigns.reconcile(key)

    def on_job_event(self, namespace: str | None, labels: Mapping[str, str]) -> None:
        """A sender Job changed (started, finished, failed, deleted by hand): its Campaign's key."""
        campaign = labels.get(build.CAMPAIGN_LABEL)
        if campaign:
            self.kick((namespace or "", campaign))

    async def resync_keys(self) -> list[Hashable]:
        """Every Campaign (the resync); then the erasure requests of the tenants' namespaces are carried out."""
        keys: list[Hashable] = [(b["metadata"]["namespace"], b["metadata"]["name"])
                                for b in await self.kube.list_objects(API_VERSION, "Campaign")]
        await self._erasures()
        return keys

    async def _erasures(self) -> None:
        namespaces = {}
        for tenant in await self.kube.list_cached(API_VERSION, "Tenant"):
            with contextlib.suppress(ValidationError):
                spec = TenantSpec.model_validate(tenant.get("spec") or {})
                namespaces[tenant["metadata"]["name"]] = namespace_name(tenant["metadata"]["name"], spec)
        dsn = self.campaigns.settings.ledger_dsn
        try:
            await erasure.process_requests(self.kube, namespaces, now_rfc3339(),
                                           functools.partial(erase_from_ledger, dsn) if dsn else None,
                                           self.campaigns.settings)
        except Paused:
            raise
        except Exception:  # one round failing (a pod list, a patch) is tried again next resync
            log.exception("erasure requests failed; the next resync tries again")

    # --- tenant suspension (called by the Tenant's reconcile) -------------------------------------

    def assess_tenant(self, body: Mapping[str, Any], spec: TenantSpec
                      ) -> tuple[dict[str, str], tuple[str, str, str, str]]:
        """(usage rate fields, Suspended condition) of a Tenant from the latest MTA stats."""
        snapshot = self._usage.latest()
        tenants = [r.tenants for r in snapshot.reports] if snapshot is not None else []
        decision, condition = suspension.assess(body, spec.suspension, tenants, self.clock.now())
        rates = {}
        if decision.bounce_rate is not None and decision.complaint_rate is not None:
            rates = {"bounceRate": decision.bounce_rate, "complaintRate": decision.complaint_rate}
        return rates, condition

    async def tenant_assessed(self, body: Mapping[str, Any], spec: TenantSpec,
                              condition: tuple[str, str, str, str]) -> bool:
        """After the Tenant's status is published: when its suspension flipped, an Event and its campaigns
        re-derived (they pause or resume). Returns whether it flipped (the servers then re-render)."""
        name = body["metadata"]["name"]
        self.campaign_metrics.observe_tenant(name, spec.suspended or condition[1] == "True")
        before = suspension.condition_of(body)
        was = before is not None and before.get("status") == "True"
        now = condition[1] == "True"
        if was == now:
            return False
        self.deps.status.post_event_soon(body, "Warning" if now else "Normal",
                                         "Suspended" if now else "SuspensionLifted", condition[3])
        for campaign in await self.kube.list_objects(API_VERSION, "Campaign", namespace_name(name, spec)):
            if campaign["spec"].get("tenant") == name:
                self.kick((campaign["metadata"]["namespace"], campaign["metadata"]["name"]))
        return True
