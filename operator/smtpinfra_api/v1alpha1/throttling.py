"""Traffic shaping of an SmtpServer: limits per destination domain, mailbox provider and source IP."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from ..meta import (
    ApiModel,
    DnsLabel,
    Duration,
    Fqdn,
    cel,
)
from .common import SET_LIST, map_list


class ShapingRule(ApiModel):
    """Traffic shaping limits for one scope; unset fields inherit from the wider scope."""

    connection_limit: Annotated[int, Field(ge=1, le=10000)] | None = None
    """Most concurrent connections."""
    max_message_rate: Annotated[str, Field(pattern=r"^[0-9]+/(s|m|h|d)$")] | None = None
    """Most messages per unit of time, e.g. 100/m."""
    max_connection_rate: Annotated[str, Field(pattern=r"^[0-9]+/(s|m|h|d)$")] | None = None
    """Most new connections per unit of time, e.g. 10/s."""
    max_deliveries_per_connection: Annotated[int, Field(ge=1, le=100000)] | None = None
    """Messages sent over one connection before it is closed."""


class DomainShaping(ShapingRule):
    """Limits for one recipient domain."""

    domain: Fqdn
    """Recipient domain the limits apply to."""


class ProviderShaping(ShapingRule):
    """Limits shared by every destination whose MX hosts end with one of the suffixes (MX rollup)."""

    name: DnsLabel
    """A name for the provider, e.g. gmail."""
    mx_suffixes: Annotated[list[Fqdn], Field(min_length=1, max_length=50, json_schema_extra=SET_LIST)]
    """MX host name suffixes that identify the provider, e.g. google.com."""


class SourceShaping(ShapingRule):
    """Limits for one sending IP address."""

    address: Annotated[str, Field(max_length=45, json_schema_extra={"x-kubernetes-validations": [
        cel("isIP(self)", "spec.throttling.sources[].address must be an IP address")]})]
    """The sending IP address."""


class AutomationAction(StrEnum):
    """What a matching remote reply does to the (source, destination) pair."""

    SUSPEND = "Suspend"
    THROTTLE = "Throttle"


class AutomationRule(ApiModel):
    """Response-driven shaping: a reply that matches suspends or slows a (source, destination)."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "self.action != 'Throttle' || has(self.maxMessageRate)",
                    "spec.throttling.automation[].maxMessageRate is required when action is Throttle",
                ),
            ]
        }
    }

    name: DnsLabel
    """Name of the rule, reported in metrics and events."""
    match: Annotated[str, Field(min_length=1, max_length=1024)]
    """Regular expression matched against the remote reply text, e.g. \\[TSS04\\]."""
    action: AutomationAction
    """Suspend delivery, or Throttle it to maxMessageRate."""
    duration: Duration
    """How long the action lasts."""
    max_message_rate: Annotated[str, Field(pattern=r"^[0-9]+/(s|m|h|d)$")] | None = None
    """Rate while throttled, e.g. 1/m."""


class ThrottlingSpec(ApiModel):
    """Traffic shaping: default, per domain, per provider (MX rollup), per source IP, automation."""

    default: ShapingRule = ShapingRule()
    """Limits for every destination not matched by a narrower scope."""
    domains: Annotated[list[DomainShaping], Field(max_length=500, json_schema_extra=map_list("domain"))] = []
    """Per recipient domain limits."""
    providers: Annotated[list[ProviderShaping], Field(max_length=100, json_schema_extra=map_list("name"))] = []
    """Per mailbox provider limits, matched by MX host suffix."""
    sources: Annotated[list[SourceShaping], Field(max_length=1000, json_schema_extra=map_list("address"))] = []
    """Per sending IP limits."""
    automation: Annotated[list[AutomationRule], Field(max_length=100, json_schema_extra=map_list("name"))] = []
    """Reply-driven rules (suspend or slow down for a duration)."""
