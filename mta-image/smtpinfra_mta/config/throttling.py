"""The throttling section: providers, shaping rules, warm-up caps and response-driven automation."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .types import DomainName, Duration, IPAddress, Rate, Section


class Provider(Section):
    """A mailbox provider recognised by its MX host names (KumoMTA's MX rollup)."""

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description="Provider name, e.g. 'google'.")
    mx_suffixes: list[DomainName] = Field(
        min_length=1,
        description="MX host suffixes; a destination whose MX hosts all end in one of them belongs to the provider, "
        "and shares its limits with every other such destination.",
    )


class ThrottleRule(Section):
    """Traffic shaping for one scope; the most specific matching rule wins field by field."""

    scope: Literal["default", "domain", "provider", "source_ip"] = Field(
        description="What the rule applies to: everything, one recipient domain, one provider, or one source IP."
    )
    match: str | None = Field(
        None, description="The domain, provider name or source IP address; must be empty for scope 'default'."
    )
    connection_limit: int | None = Field(None, ge=1, description="Concurrent outbound connections.")
    max_message_rate: Rate | None = Field(None, description="Messages per time, e.g. '100/h'.")
    max_connection_rate: Rate | None = Field(None, description="New connections per time, e.g. '10/m'.")
    max_deliveries_per_connection: int | None = Field(None, ge=1, description="Messages sent over one connection.")

    @model_validator(mode="after")
    def _match_fits_scope(self) -> ThrottleRule:
        if self.scope == "default":
            if self.match:
                raise ValueError("a 'default' throttle rule must not have 'match'")
        elif not self.match:
            raise ValueError(f"a '{self.scope}' throttle rule needs 'match'")
        elif self.scope == "source_ip":
            try:
                ipaddress.ip_address(self.match)
            except ValueError as exc:
                raise ValueError(f"'match' of a source_ip rule must be an IP address, got {self.match!r}") from exc
        return self


class WarmupCap(Section):
    """A warm-up volume cap for one source IP (optionally only towards one provider). Survives restarts."""

    source_ip: IPAddress = Field(description="Source IP the cap applies to.")
    provider: str | None = Field(None, description="Provider name; null caps all traffic from the IP.")
    per_hour: int | None = Field(None, ge=0, description="Messages per clock hour of the configured clock zone.")
    per_day: int | None = Field(None, ge=0, description="Messages per day of the configured clock zone.")


class AutomationRule(Section):
    """Response-driven shaping (KumoMTA automation): a remote reply matching ``regex`` triggers ``action``."""

    name: str = Field(min_length=1, description="Rule name, for logs and metrics.")
    regex: str = Field(description="Python regular expression searched in the remote reply text (code + text).")
    scope: Literal["domain", "provider", "source_ip"] = Field(
        "provider", description="What is suspended/slowed: the destination's domain or provider, or the source IP."
    )
    action: Literal["suspend", "throttle"] = Field(description="Stop sending, or lower max_message_rate.")
    duration: Duration = Field(gt=0, description="How long the action lasts.")
    max_message_rate: Rate | None = Field(None, description="The rate while throttled (action 'throttle').")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"regex does not compile: {exc}") from exc
        return v

    @model_validator(mode="after")
    def _rate_for_throttle(self) -> AutomationRule:
        if self.action == "throttle" and self.max_message_rate is None:
            raise ValueError("action 'throttle' needs max_message_rate")
        return self


class Throttling(Section):
    providers: list[Provider] = Field(default_factory=list, description="Provider definitions (MX rollup).")
    rules: list[ThrottleRule] = Field(
        default_factory=lambda: [ThrottleRule(scope="default", connection_limit=10, max_deliveries_per_connection=100)],
        description="Shaping rules. Precedence: source_ip > domain > provider > default.",
    )
    warmup: list[WarmupCap] = Field(default_factory=list, description="Warm-up caps per source IP.")
    automation: list[AutomationRule] = Field(default_factory=list, description="Response-driven shaping rules.")

    @model_validator(mode="after")
    def _references(self) -> Throttling:
        names = [p.name for p in self.providers]
        if len(set(names)) != len(names):
            raise ValueError("provider names must be unique")
        for rule in self.rules:
            if rule.scope == "provider" and rule.match not in names:
                raise ValueError(f"throttle rule refers to unknown provider {rule.match!r}")
        for cap in self.warmup:
            if cap.provider is not None and cap.provider not in names:
                raise ValueError(f"warm-up cap refers to unknown provider {cap.provider!r}")
        return self
