"""The campaign metrics (names fixed for the dashboard and alerts), registered on a given registry."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Gauge


class CampaignMetrics:
    """`smtpinfra_operator_campaign_recipients{namespace,campaign,outcome}` and `..._tenant_suspended{tenant}`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.recipients = Gauge("smtpinfra_operator_campaign_recipients",
                                "Recipients of a campaign by outcome (the Campaign's status counters)",
                                ["namespace", "campaign", "outcome"], registry=registry)
        self.tenant_suspended = Gauge("smtpinfra_operator_tenant_suspended",
                                      "1 while the tenant is suspended (by spec or for its rates)", ["tenant"],
                                      registry=registry)

    def observe_campaign(self, namespace: str, campaign: str, counters: Mapping[str, int]) -> None:
        for outcome, value in counters.items():
            self.recipients.labels(namespace, campaign, outcome).set(value)

    def forget_campaign(self, namespace: str, campaign: str, outcomes: list[str]) -> None:
        for outcome in outcomes:
            with contextlib.suppress(KeyError):
                self.recipients.remove(namespace, campaign, outcome)

    def observe_tenant(self, tenant: str, suspended: bool) -> None:
        self.tenant_suspended.labels(tenant).set(1 if suspended else 0)

    def forget_tenant(self, tenant: str) -> None:
        with contextlib.suppress(KeyError):
            self.tenant_suspended.remove(tenant)
