"""The Campaign controller: one reconcile gathers (reads only), decides (`progress.decide`), applies and publishes.

Its dependencies come through the constructor (the API calls, a clock, the metrics), so it runs
the same under Kopf's watch, the resync, or a test. It is the only writer of a Campaign's status.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from smtpinfra_api.meta import API_VERSION
from smtpinfra_api.v1alpha1 import CampaignSpec, SmtpServerSpec, TenantSpec
from smtpinfra_campaign.keys import sender_key
from smtpinfra_campaign.templates import validate_templates

from ..builders import unsubscribe
from ..builders.tenant import namespace_name
from ..builders.workload import Owner, labels
from ..conditions import FALSE, TRUE, UNKNOWN, Outcome
from . import job as build
from . import recipients, suspension
from .api import CampaignApi
from .metrics import CampaignMetrics
from .progress import Facts, JobState, Verdict, decide, job_state, parse_progress, percent, sum_outcomes

log = logging.getLogger(__name__)

TEMPLATES_VALID = "TemplatesValid"
SUSPENDED = "Suspended"
Key = tuple[str, str]
"""(namespace, name) of a Campaign."""


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _domain_allowed(address: str, domains: list[str]) -> bool:
    """The MTA's rule: a tenant may send as any of its domains or their subdomains."""
    domain = address.rpartition("@")[2].lower().rstrip(".")
    return any(domain == d.lower().rstrip(".") or domain.endswith("." + d.lower().rstrip(".")) for d in domains)


class CampaignController:
    """Reconciles Campaigns into sender Jobs and status."""

    def __init__(self, api: CampaignApi, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 settings: build.SenderSettings | None = None, metrics: CampaignMetrics | None = None) -> None:
        self.api = api
        self.clock = clock
        self.settings = settings or build.SenderSettings()
        self.metrics = metrics

    # --- gather -------------------------------------------------------------------------------

    async def _sample(self, namespace: str, spec: CampaignSpec) -> tuple[recipients.Sample | None, str | None]:
        """The first rows of the list, or why they cannot be read."""
        source = spec.recipients
        if source.inline:
            return recipients.inline_sample(list(source.inline)), None
        for kind, field, ref, encoded in (("ConfigMap", "configMapRef", source.config_map_ref, False),
                                          ("Secret", "secretRef", source.secret_ref, True)):
            if ref is None:
                continue
            found = await self.api.get("v1", kind, ref.name, namespace)
            if found is None:
                return None, f"{kind} {ref.name} (spec.recipients.{field}) not found"
            value = (found.get("data") or {}).get(ref.key)
            if value is None:
                return None, f"{kind} {ref.name} has no key {ref.key} (spec.recipients.{field}.key)"
            text = base64.b64decode(value).decode("utf-8", errors="replace") if encoded else value
            return recipients.sample(text), None
        return None, "spec.recipients names no list"

    async def _check(self, namespace: str, spec: CampaignSpec
                     ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, tuple[str, str] | None]:
        """(tenant, server, problem): the references, and the first thing the user must fix."""
        tenant = await self.api.get(API_VERSION, "Tenant", spec.tenant)
        if tenant is None or tenant["metadata"].get("deletionTimestamp"):
            return None, None, ("TenantNotFound", f"Tenant {spec.tenant} (spec.tenant) not found")
        tspec = TenantSpec.model_validate(tenant.get("spec") or {})
        own = namespace_name(spec.tenant, tspec)
        if own != namespace:
            return tenant, None, ("WrongNamespace", f"Tenant {spec.tenant} sends from namespace {own}, "
                                                    f"not {namespace}: create the Campaign there")
        if not _domain_allowed(spec.sender.address, list(tspec.sender_domains)):
            return tenant, None, ("SenderDomainNotAllowed",
                                  f"spec.sender.address {spec.sender.address}: its domain is not one of the tenant's "
                                  f"sender domains ({', '.join(tspec.sender_domains)})")
        server_ns = spec.server_ref.namespace or namespace
        server = await self.api.get(API_VERSION, "SmtpServer", spec.server_ref.name, server_ns)
        if server is None or server["metadata"].get("deletionTimestamp"):
            return tenant, None, ("ServerNotFound", f"SmtpServer {server_ns}/{spec.server_ref.name} (spec.serverRef) "
                                                    f"not found")
        return tenant, server, None

    async def _unsubscribe_key(self, server: Mapping[str, Any]) -> str | None:
        """The server's unsubscribe key (made here when its server's reconcile has not made it yet)."""
        meta = server["metadata"]
        name = unsubscribe.secret_name(meta["name"])
        secret = await self.api.get("v1", "Secret", name, meta["namespace"])
        if secret is None:
            owner = Owner(name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid", ""))
            await self.api.create(unsubscribe.secret(owner, labels(owner.name), unsubscribe.new_key()))
            secret = await self.api.get("v1", "Secret", name, meta["namespace"])
        raw = ((secret or {}).get("data") or {}).get(unsubscribe.KEY)
        return base64.b64decode(raw).decode() if raw else None

    # --- reconcile ----------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> Verdict | None:
        """Re-derive one Campaign: its sender's objects, the Job's suspension, and its status."""
        namespace, name = key
        body = await self.api.get(API_VERSION, "Campaign", name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            if self.metrics is not None:
                self.metrics.forget_campaign(namespace, name, list(decide(Facts(now=self.clock())).counters))
            return None  # its Job, Secret, claim and RBAC go with it (ownerReferences)
        try:
            spec = CampaignSpec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            await self.api.publish(body, Outcome(ready=FALSE, reason="InvalidSpec", message=str(error), stalled=True,
                                                 fields={"phase": "Failed"}))
            return None
        status = body.get("status") or {}
        tenant, server, problem = await self._check(namespace, spec)
        sample, unreadable = await self._sample(namespace, spec)
        rendering = None
        if sample is not None:
            rendering = validate_templates(spec, sample.rows)
        elif problem is None and unreadable is not None:
            problem = ("RecipientsNotFound", unreadable)
        job_body = await self.api.get("batch/v1", "Job", build.job_name(name), namespace)
        lease = await self.api.get("coordination.k8s.io/v1", "Lease", build.lease_name(name), namespace)
        facts = Facts(
            now=self.clock(), start_time=spec.start_time, suspend=spec.suspend,
            tenant_suspended=self._tenant_suspended(tenant), template_error=rendering, problem=problem,
            job=job_state(job_body), progress=parse_progress(lease),
            outcomes=sum_outcomes(self.api.campaign_stats(), f"{namespace}/{name}"),
            previous_phase=status.get("phase"),
        )
        verdict = decide(facts)
        job = await self._apply(body, verdict, facts.job, server, job_body)
        await self._publish(body, status, verdict, facts, job, rendering, sample)
        return verdict

    @staticmethod
    def _tenant_suspended(tenant: Mapping[str, Any] | None) -> str:
        if tenant is None:
            return ""
        if (tenant.get("spec") or {}).get("suspended"):
            return "spec.suspended is true"
        return suspension.suspended_reason(tenant)

    async def _apply(self, body: Mapping[str, Any], verdict: Verdict, job: JobState,
                     server: Mapping[str, Any] | None, job_body: Mapping[str, Any] | None) -> JobState:
        """Create the sender's objects when it should run, and (un)suspend an existing Job; the Job as it now is."""
        meta = body["metadata"]
        if job.exists and job_body is not None:
            if not (job.succeeded or job.failed) and job.suspended != verdict.pause_job:
                await self.api.merge_patch("batch/v1", "Job", job_body["metadata"]["name"], meta["namespace"],
                                           {"spec": {"suspend": verdict.pause_job}})
                return replace(job, suspended=verdict.pause_job)
            return job
        if not verdict.start_job or server is None or verdict.phase == "Completed":
            return job
        key = await self._unsubscribe_key(server)
        if key is None:
            return job
        campaign = build.CampaignRef.of(body)
        sref = server["metadata"]
        server_ref = build.ServerRef(sref["name"], sref["namespace"], SmtpServerSpec.model_validate(server["spec"]))
        tenant = await self.api.get(API_VERSION, "Tenant", campaign.spec.tenant)
        if tenant is not None:
            for obj in build.tenant_reader(campaign.spec.tenant, tenant["metadata"].get("uid", ""), meta["namespace"]):
                await self.api.apply(obj)
        tls_secret = build.tls_secret_name(server_ref)
        ca_pem = build.tls_ca(await self.api.get("v1", "Secret", tls_secret, sref["namespace"])) if tls_secret else None
        key = sender_key(key, campaign.spec.tenant, meta["namespace"])  # never the server's own key
        for obj in build.desired_objects(campaign, server_ref, self.settings, key, suspend=verdict.pause_job,
                                         ca_pem=ca_pem):
            if obj["kind"] in ("Job", "PersistentVolumeClaim"):
                await self.api.create(obj)  # created once: their specs are (mostly) immutable
            else:
                await self.api.apply(obj)
        log.info("Campaign %s/%s: sender Job %s created", meta["namespace"], meta["name"], build.job_name(meta["name"]))
        return JobState(exists=True, suspended=verdict.pause_job)

    async def _publish(self, body: Mapping[str, Any], status: Mapping[str, Any], verdict: Verdict, facts: Facts,
                       job: JobState, error: str | None, sample: recipients.Sample | None) -> None:
        now = _time(facts.now)
        fields: dict[str, Any] = {"phase": verdict.phase, "counters": verdict.counters,
                                  "progress": percent(verdict.counters)}
        if job.exists:
            fields["jobName"] = build.job_name(body["metadata"]["name"])
            fields["startedAt"] = status.get("startedAt") or now
        if verdict.phase in ("Completed", "Failed") and job.exists:
            fields["completedAt"] = status.get("completedAt") or now
        if facts.progress is not None and facts.progress.invalid_rows:
            fields["invalidRows"] = [{"row": r, "reason": why} for r, why in facts.progress.invalid_rows]
        if error is not None:
            templates = (TEMPLATES_VALID, FALSE, "TemplateError", error)
        elif sample is not None:
            templates = (TEMPLATES_VALID, TRUE, "Rendered",
                         f"subject and bodies render for the first {len(sample.rows)} recipient row(s)")
        else:
            templates = (TEMPLATES_VALID, UNKNOWN, "RecipientsUnreadable", "no recipient rows to render against")
        paused = (SUSPENDED, TRUE, verdict.paused_reason, verdict.message) if verdict.paused_reason else \
            (SUSPENDED, FALSE, "NotSuspended", "")
        outcome = Outcome(ready=verdict.ready, reason=verdict.reason, message=verdict.message,
                          reconciling=verdict.reconciling, stalled=verdict.stalled, fields=fields,
                          extra_conditions=(templates, paused))
        written = await self.api.publish(body, outcome)
        if written and status.get("phase") != verdict.phase:
            warning = verdict.phase == "Failed" or verdict.paused_reason == "TenantSuspended"
            self.api.event(body, "Warning" if warning else "Normal", verdict.reason,
                           f"phase {verdict.phase}: {verdict.message}")
        if self.metrics is not None:
            self.metrics.observe_campaign(body["metadata"]["namespace"], body["metadata"]["name"], verdict.counters)
