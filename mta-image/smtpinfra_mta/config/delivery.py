"""The delivery section: resolver, retries, STARTTLS policies and static routes of outbound mail."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from .types import DomainName, Duration, IPAddress, Section, normalise_domain


class Resolver(Section):
    """The DNS resolver used for MX/A lookups (a cluster-local caching resolver in production)."""

    address: IPAddress | None = Field(None, description="Resolver address; null uses /etc/resolv.conf.")
    port: int = Field(53, ge=1, le=65535, description="Resolver port.")
    timeout: Duration = Field(5.0, gt=0, description="Lifetime of one lookup.")


class TlsPolicy(Section):
    """Outbound STARTTLS policy for one destination domain."""

    domain: DomainName = Field(description="Recipient domain.")
    mode: Literal["opportunistic", "required"] = Field(description="'required' defers instead of sending in clear.")
    verify: bool = Field(False, description="Verify the MX certificate and host name (with mode 'required').")


class Route(Section):
    """A static next hop for one recipient domain, used instead of its MX records.

    Postfix's ``transport_maps`` entry ``domain smtp:[host]:port``: mail for an internal domain goes to its
    mail host, or all mail for a partner domain goes through a fixed smarthost. Shaping, warm-up caps and
    retries apply exactly as for MX delivery.
    """

    domain: DomainName = Field(description="Recipient domain (exact match).")
    host: str = Field(
        min_length=1, max_length=253,
        description="Next hop: an IP address, or a host name whose A/AAAA records are used (no MX lookup).",
    )
    port: int = Field(25, ge=1, le=65535, description="Next hop's SMTP port.")

    @field_validator("host")
    @classmethod
    def _host_or_ip(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            return str(normalise_domain(v))


class Delivery(Section):
    resolver: Resolver = Field(default_factory=Resolver, description="DNS resolver for MX lookups.")
    port: int = Field(25, ge=1, le=65535, description="Remote SMTP port (25; other values only for testing).")
    retry_schedule: list[Duration] = Field(
        default_factory=lambda: [60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0],
        min_length=1,
        description="Delays before successive retries after a temporary failure; the last one repeats.",
    )
    max_queue_age: Duration = Field(
        5 * 86400.0, gt=0, description="After this long in the queue a message is bounced (DSN, 4.4.7)."
    )
    starttls: Literal["opportunistic", "required"] = Field("opportunistic", description="Default STARTTLS policy.")
    tls_policies: list[TlsPolicy] = Field(default_factory=list, description="Per-destination STARTTLS overrides.")
    routes: list[Route] = Field(
        default_factory=list, description="Static next hops per recipient domain (instead of MX lookup)."
    )
    connect_timeout: Duration = Field(30.0, gt=0, description="TCP connect + banner timeout.")
    command_timeout: Duration = Field(300.0, gt=0, description="Timeout for each SMTP command reply.")
    idle_timeout: Duration = Field(5.0, ge=0, description="How long an idle outbound connection is kept for reuse.")
    max_concurrency: int = Field(500, ge=1, description="Outbound connections across all destinations.")
    separate_process: bool = Field(
        False,
        description="Deliver from a second process, so receiving and delivering use two CPU cores. The SMTP "
        "process keeps sessions, quotas, idempotency and DKIM; the delivery process owns queues, shaping, "
        "warm-up caps, DSNs and inbound reports. Each piece of state still has exactly one owner.",
    )
