"""Campaign: the controller's event sources (Kopf's watch of Campaigns and of their sender Jobs) and
the Tenant's suspension hooks; everything else is in `smtpinfra_operator.campaigns`.

Events only put (namespace, name) on the queue; the periodic resync kicks every Campaign too
(`resync.py`), which is how the Lease's progress and the MTAs' stats reach the status.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from prometheus_client import REGISTRY
from pydantic import ValidationError

from smtpinfra_api.meta import API_VERSION, GROUP, VERSION
from smtpinfra_api.v1alpha1 import Campaign, TenantSpec

from .. import kube, usage
from ..builders.tenant import namespace_name
from ..campaigns import erasure, suspension
from ..campaigns import job as build
from ..campaigns.api import ClusterApi
from ..campaigns.controller import CampaignController, Key
from ..campaigns.metrics import CampaignMetrics
from ..conditions import now_rfc3339
from ..kicker import Kicker
from ..statuswriter import post_event_soon

log = logging.getLogger(__name__)
metrics = CampaignMetrics(REGISTRY)
controller = CampaignController(ClusterApi(), settings=build.settings_from_env(os.environ), metrics=metrics)
campaign_kicker: Kicker[Key] = Kicker(controller.reconcile)


@kopf.on.event(GROUP, VERSION, Campaign.plural, id="on_campaign")
async def on_campaign_event(name: str, namespace: str | None, type: str | None, **_: Any) -> None:
    """A Campaign appeared, changed or went (its status writes come back here too; they find nothing to do)."""
    campaign_kicker.kick((namespace or "", name), delay=0.0)


@kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/component": build.COMPONENT}, id="on_sender_job")
async def on_sender_job_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    """The sender Job changed (started, finished, failed, deleted by hand): re-derive its Campaign."""
    campaign = labels.get(build.CAMPAIGN_LABEL)
    if campaign:
        campaign_kicker.kick((namespace or "", campaign))


async def kick_all(background: bool = True) -> None:
    """Re-derive every Campaign (the resync), and carry out the erasure requests of the tenants' namespaces."""
    for body in await kube.list_objects(API_VERSION, "Campaign"):
        campaign_kicker.kick((body["metadata"]["namespace"], body["metadata"]["name"]), background=background)
    namespaces = {}
    for tenant in await kube.list_cached(API_VERSION, "Tenant"):
        with contextlib.suppress(ValidationError):
            spec = TenantSpec.model_validate(tenant.get("spec") or {})
            namespaces[tenant["metadata"]["name"]] = namespace_name(tenant["metadata"]["name"], spec)
    try:
        await erasure.process_requests(namespaces, now_rfc3339())
    except kube.Paused:
        raise
    except Exception:  # one round failing (a pod list, a patch) is tried again next resync
        log.exception("erasure requests failed; the next resync tries again")


# --- tenant suspension (called by the Tenant's reconcile) -----------------------------------------


def assess_tenant(body: Mapping[str, Any], spec: TenantSpec) -> tuple[dict[str, str], tuple[str, str, str, str]]:
    """(usage rate fields, Suspended condition) of a Tenant from the latest MTA stats."""
    snapshot = usage.latest()
    tenants = [r.tenants for r in snapshot.reports] if snapshot is not None else []
    decision, condition = suspension.assess(body, spec.suspension, tenants, datetime.now(UTC))
    rates = {}
    if decision.bounce_rate is not None and decision.complaint_rate is not None:
        rates = {"bounceRate": decision.bounce_rate, "complaintRate": decision.complaint_rate}
    return rates, condition


async def tenant_assessed(body: Mapping[str, Any], spec: TenantSpec, condition: tuple[str, str, str, str]) -> bool:
    """After the Tenant's status is published: when its suspension flipped, an Event and its campaigns
    re-derived (they pause or resume). Returns whether it flipped (the servers then re-render)."""
    name = body["metadata"]["name"]
    metrics.observe_tenant(name, spec.suspended or condition[1] == "True")
    before = suspension.condition_of(body)
    was = before is not None and before.get("status") == "True"
    now = condition[1] == "True"
    if was == now:
        return False
    post_event_soon(body, "Warning" if now else "Normal", "Suspended" if now else "SuspensionLifted", condition[3])
    for campaign in await kube.list_objects(API_VERSION, "Campaign", namespace_name(name, spec)):
        if campaign["spec"].get("tenant") == name:
            campaign_kicker.kick((campaign["metadata"]["namespace"], campaign["metadata"]["name"]))
    return True
