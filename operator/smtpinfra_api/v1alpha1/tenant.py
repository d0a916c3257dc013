"""Tenant: a customer account with its namespace, sender domains, quotas and suspension."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from ..meta import (
    DNS_LABEL_PATTERN,
    ApiModel,
    CommonStatus,
    Duration,
    Fqdn,
    ObjectName,
    Percent,
    StatusModel,
    cel,
)
from .common import SET_LIST
from .kind import AGE_COLUMN, Kind, PrinterColumn, ready_columns


class TenantPlan(StrEnum):
    """Commercial plan of the tenant."""

    FREE = "Free"
    STANDARD = "Standard"
    PREMIUM = "Premium"
    DEDICATED = "Dedicated"


class Quotas(ApiModel):
    """Sending quotas."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "!has(self.perHour) || !has(self.perDay) || self.perHour <= self.perDay",
                    "spec.quotas.perHour must not exceed spec.quotas.perDay",
                ),
            ]
        }
    }

    per_hour: Annotated[int, Field(ge=0, le=1_000_000_000)] | None = None
    """Most messages per hour; unlimited when unset."""
    per_day: Annotated[int, Field(ge=0, le=10_000_000_000)] | None = None
    """Most messages per day; unlimited when unset."""


class SuspensionThresholds(ApiModel):
    """Automatic suspension when the tenant's mail hurts the shared reputation."""

    max_complaint_rate: Percent = "0.3"
    """Complaint rate in percent over the window above which the tenant is suspended."""
    max_bounce_rate: Percent = "10"
    """Hard-bounce rate in percent over the window above which the tenant is suspended."""
    window: Duration = "24h"
    """Window the rates are computed over."""
    min_volume: Annotated[int, Field(ge=0, le=10_000_000)] = 500
    """Messages in the window before the rates are evaluated."""


class TenantSpec(ApiModel):
    """A customer account."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "!has(oldSelf.namespace) || has(self.namespace)",
                    "spec.namespace is immutable once set and cannot be removed",
                    field_path=".namespace",
                ),
                cel(
                    "self.plan != 'Dedicated' || has(self.ipPool)",
                    "spec.ipPool is required when spec.plan is Dedicated",
                ),
            ]
        }
    }

    display_name: Annotated[str, Field(min_length=1, max_length=256)]
    """Human readable account name."""
    namespace: Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63, json_schema_extra={
        "x-kubernetes-validations": [
            cel("self == oldSelf", "spec.namespace is immutable once set"),
            cel("self != 'default' && !self.startsWith('kube-')",
                "spec.namespace must not be default or a kube-* namespace: the tenant's credentials are "
                "written there; choose a namespace of its own, e.g. tenant-<name>"),
        ]})] | None = None
    """Namespace of the tenant's Campaigns and credentials; tenant-<name> when unset; not default or kube-*."""
    sender_domains: Annotated[list[Fqdn], Field(min_length=1, max_length=100, json_schema_extra=SET_LIST)]
    """Domains the tenant may send as (MAIL FROM and header From)."""
    quotas: Quotas = Quotas()
    """Sending quotas."""
    plan: TenantPlan = TenantPlan.STANDARD
    """Commercial plan."""
    ip_pool: ObjectName | None = None
    """A dedicated IpPool; the tenant's mail is only sent from it."""
    suspension: SuspensionThresholds = SuspensionThresholds()
    """Thresholds for automatic suspension."""
    suspended: bool = False
    """Refuse all submissions from the tenant (5xx)."""


QUOTA_USED_PATTERN = r"^[0-9]{1,12}(\.[0-9])?$"


class TenantUsage(StatusModel):
    """Sending counters, summed over the MTA pods of the servers that serve the tenant."""

    sent_this_hour: Annotated[int, Field(ge=0)] = 0
    """Messages accepted in the current UTC hour (counted per recipient, as the quotas count them)."""
    sent_today: Annotated[int, Field(ge=0)] = 0
    """Messages accepted in the current UTC day (counted per recipient, as the quotas count them)."""
    hourly_quota_used: Annotated[str, Field(pattern=QUOTA_USED_PATTERN, max_length=16)] | None = None
    """Percent of spec.quotas.perHour used this hour; unset without an hourly quota."""
    daily_quota_used: Annotated[str, Field(pattern=QUOTA_USED_PATTERN, max_length=16)] | None = None
    """Percent of spec.quotas.perDay used today; unset without a daily quota."""
    observed_at: datetime | None = None
    """When the MTA pods were read for these figures (not moved while the figures stay the same)."""
    partial: bool | None = None
    """Some running MTA pods that serve the tenant did not answer: the figures are a lower bound."""
    unreachable_pods: Annotated[list[Annotated[str, Field(max_length=317)]], Field(max_length=10)] | None = None
    """Pods (namespace/name) that did not answer when `partial` is true; at most 10 are named."""
    bounce_rate: Annotated[str, Field(max_length=16)] | None = None
    """Hard-bounce rate in percent over the suspension window."""
    complaint_rate: Annotated[str, Field(max_length=16)] | None = None
    """Complaint rate in percent over the suspension window."""


class TenantState(StrEnum):
    """Whether the tenant may send."""

    ACTIVE = "Active"
    SUSPENDED = "Suspended"


class TenantStatus(CommonStatus):
    """Observed state of a tenant."""

    state: TenantState | None = None
    """Active, or Suspended (by spec or automatically)."""
    namespace: Annotated[str, Field(max_length=63)] | None = None
    """The tenant's namespace."""
    credentials_secret: Annotated[str, Field(max_length=253)] | None = None
    """Secret in the tenant's namespace with the SMTP username and password."""
    usage: TenantUsage | None = None
    """Sending counters."""


class Tenant(Kind):
    kind = "Tenant"
    plural = "tenants"
    short_names = ["tnt"]
    scope = "Cluster"
    spec_model = TenantSpec
    status_model = TenantStatus
    top_level_validations = [
        cel("has(self.spec.namespace) || (self.metadata.name.size() <= 56 && !self.metadata.name.contains('.'))",
            "metadata.name must be a DNS label of at most 56 characters when spec.namespace is unset "
            "(the namespace is tenant-<name>)"),
    ]
    description = "A customer account: namespace, SMTP credentials, sender domains, quotas and suspension."
    columns = [
        PrinterColumn(name="Namespace", type="string", json_path=".status.namespace",
                      description="Tenant namespace"),
        PrinterColumn(name="Plan", type="string", json_path=".spec.plan", description="Plan"),
        PrinterColumn(name="State", type="string", json_path=".status.state", description="Active or Suspended"),
        PrinterColumn(name="Sent-Today", type="integer", json_path=".status.usage.sentToday", priority=1,
                      description="Messages accepted today"),
        PrinterColumn(name="Quota-Today", type="string", json_path=".status.usage.dailyQuotaUsed", priority=1,
                      description="Percent of the daily quota used"),
        *ready_columns(),
        AGE_COLUMN,
    ]
