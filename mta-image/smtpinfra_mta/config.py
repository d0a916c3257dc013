"""The MTA configuration schema: the contract between the operator and the MTA.

Over 500 lines because it is one contract the operator imports as a whole (the import-linter
contract allows only this module); splitting it into a package of sections is the next step.

The operator renders an :class:`MtaConfig` into a ConfigMap as YAML (``model_dump(mode="json")``);
the MTA loads it with :func:`load_config`. Secrets (TLS key, DKIM keys, credential hashes) are
referenced by file path, because they are mounted from Kubernetes Secrets next to the ConfigMap.
Every model forbids unknown fields so a typo in the rendered config fails loudly instead of being
silently ignored.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from smtpinfra_mta.clock import FAKE_TIME_ENV, clock_from_env
from smtpinfra_mta.contract import credential_problem, username_problem

# Scheme and hash_password are re-exported: the operator hashes tenants' credentials with them, and
# validates tenant-provided ones with credential_problem.
from smtpinfra_mta.passwords import Scheme, hash_password, hash_problem, verify_password

# The clock is part of the contract: the operator judges warm-up days by the same (test) clock as the MTAs.
__all__ = [
    "FAKE_TIME_ENV",
    "ConfigError",
    "MtaConfig",
    "Scheme",
    "clock_from_env",
    "credential_problem",
    "hash_password",
    "load_config",
    "parse_config",
    "verify_password",
]

DEFAULT_CONFIG_PATH = Path("/etc/smtp-infra/mta.yaml")

_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|m|min|h|hour|d|day)\s*$")
_RATE_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}


class ConfigError(Exception):
    """The config file is missing, not YAML, or fails validation; the message says what to fix."""


def _parse_duration(value: Any) -> Any:
    """Accept seconds as a number or a string such as ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '30s', '5m', '2h', '1d'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"invalid duration {value!r}: use a number of seconds or e.g. '30s', '5m', '2h', '1d'")
        return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    return value


def _parse_rate(value: Any) -> Any:
    """Accept ``"100/h"`` style rates (KumoMTA's notation) and normalise them to messages per second."""
    if isinstance(value, bool):
        raise ValueError("a rate must look like '100/h' (units: s, m, h, d) or a number per second")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _RATE_RE.match(value)
        if not m:
            raise ValueError(f"invalid rate {value!r}: use e.g. '10/s', '300/m', '1000/h', '50000/d'")
        return float(m.group(1)) / _RATE_UNITS[m.group(2)]
    return value


def _normalise_domain(value: Any) -> Any:
    if isinstance(value, str):
        d = value.strip().rstrip(".").lower()
        try:
            d = d.encode("idna").decode("ascii") if any(ord(c) > 127 for c in d) else d
        except UnicodeError as exc:
            raise ValueError(f"invalid domain name {value!r}") from exc
        if not _DOMAIN_RE.match(d):
            raise ValueError(f"invalid domain name {value!r}")
        return d
    return value


Duration = Annotated[float, BeforeValidator(_parse_duration), Field(ge=0)]
"""Seconds; YAML may say ``30``, ``"30s"``, ``"5m"``, ``"2h"`` or ``"1d"``."""
Rate = Annotated[float, BeforeValidator(_parse_rate), Field(gt=0)]
"""Events per second; YAML may say ``"100/h"``, ``"10/s"``, ``"5000/d"``."""
DomainName = Annotated[str, BeforeValidator(_normalise_domain)]
IPAddress = Annotated[str, BeforeValidator(lambda v: str(ipaddress.ip_address(v)) if isinstance(v, str) else v)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------------------------- listeners


class TlsFiles(_Model):
    """A certificate chain and key mounted from a Secret (kubernetes.io/tls layout by default)."""

    cert_file: Path = Field(
        Path("/etc/smtp-infra/tls/tls.crt"), description="PEM certificate chain presented to SMTP clients."
    )
    key_file: Path = Field(Path("/etc/smtp-infra/tls/tls.key"), description="PEM private key of the certificate.")


class ListenerBase(_Model):
    enabled: bool = Field(True, description="Whether this listener is started.")
    bind: list[IPAddress] = Field(
        default_factory=lambda: ["0.0.0.0"], min_length=1, description="Addresses to listen on (IPv4 or IPv6)."
    )
    proxy_protocol: bool = Field(
        False,
        description="Expect a HAProxy PROXY protocol (v1 or v2) header on every connection "
        "(set when a load balancer in front preserves client addresses this way).",
    )


class SubmissionListener(ListenerBase):
    """Authenticated submission (RFC 6409): STARTTLS, then AUTH PLAIN/LOGIN, before MAIL."""

    port: int = Field(587, ge=1, le=65535, description="TCP port (587 by convention).")


class ImplicitTlsListener(ListenerBase):
    """Submission over implicit TLS (RFC 8314, port 465): TLS from the first byte, then AUTH."""

    enabled: bool = Field(False, description="Whether the implicit-TLS listener is started.")
    port: int = Field(465, ge=1, le=65535, description="TCP port (465 by convention).")


class RelayDomain(_Model):
    """A domain this MTA accepts and forwards on port 25 without AUTH (Postfix's ``relay_domains``).

    For an inbound gateway or backup MX in front of an internal mail host. Only mail *to* this domain is
    accepted, never to anywhere else, so listing a domain does not make the MTA an open relay. The next hop
    is the domain's ``delivery.routes`` entry when there is one, otherwise its MX hosts.
    """

    domain: DomainName = Field(description="Recipient domain accepted and forwarded (exact match).")
    pool: str = Field(description="Name of the IP pool (see 'pools') whose source IPs forward this mail.")


class InboundListener(ListenerBase):
    """Unauthenticated port 25: accepts mail only for the bounce/FBL domains and the relay domains."""

    port: int = Field(25, ge=1, le=65535, description="TCP port (25 by convention).")
    domains: list[DomainName] = Field(
        default_factory=list,
        description="Domains this listener accepts recipients for: the return-path (asynchronous bounce) "
        "domain and the feedback-loop (ARF complaint) domain. Everything else is refused with 5.7.1.",
    )
    relay_domains: list[RelayDomain] = Field(
        default_factory=list,
        description="Domains accepted on port 25 and forwarded (inbound gateway / backup MX). A transaction "
        "carries recipients of one kind only: report domains, or relay domains of one pool.",
    )
    starttls: bool = Field(True, description="Offer STARTTLS (not required) on port 25.")


class Listeners(_Model):
    submission: SubmissionListener = Field(
        default_factory=SubmissionListener, description="Port 587: STARTTLS + AUTH required."
    )
    implicit_tls: ImplicitTlsListener = Field(
        default_factory=ImplicitTlsListener, description="Port 465: implicit TLS + AUTH required (optional)."
    )
    inbound: InboundListener = Field(
        default_factory=InboundListener, description="Port 25: inbound bounces and complaint reports only."
    )


class ListenerLimits(_Model):
    """Connection budget of one listener kind, separate from the others' (port 25 cannot use up 587/465)."""

    max_connections: int = Field(1000, ge=1, le=100_000, description="Concurrent connections to this listener.")
    max_connections_per_ip: int = Field(
        50, ge=1, le=100_000, description="Concurrent connections to this listener from one client address.")
    idle_timeout: Duration | None = Field(
        None, gt=0, description="Seconds a session may wait for the next command; null: limits.command_timeout.")
    session_time_limit: Duration = Field(
        3600.0, gt=0, le=86400,
        description="Longest session, however active (NOOP, RSET and the like cannot extend it); a message "
        "being received or committed is finished first, then the session is closed with 421.")


def _inbound_limits() -> ListenerLimits:
    return ListenerLimits(max_connections=500, max_connections_per_ip=50, session_time_limit=600.0)


class SmtpLimits(_Model):
    """Per-session limits, and the connection budget of each listener kind."""

    max_message_size: int = Field(
        25 * 1024 * 1024, ge=1024, description="Largest message accepted in bytes (advertised as SIZE)."
    )
    max_recipients: int = Field(100, ge=1, le=100_000, description="Most RCPT TO accepted per transaction.")
    command_timeout: Duration = Field(
        300.0, gt=0, description="Idle time before a session is closed (seconds), unless its listener sets one.")
    max_sessions: int = Field(
        100_000, ge=1, description="Process-wide ceiling of concurrent sessions, above the per-listener budgets "
        "(which are what normally applies: submission, implicit_tls, inbound).")
    submission: ListenerLimits = Field(default_factory=ListenerLimits, description="Port 587 connection budget.")
    implicit_tls: ListenerLimits = Field(default_factory=ListenerLimits, description="Port 465 connection budget.")
    inbound: ListenerLimits = Field(default_factory=_inbound_limits, description="Port 25 connection budget.")
    max_data_memory: int = Field(
        256 * 1024 * 1024, ge=1024 * 1024,
        description="Bytes of message data all sessions together may hold in memory while receiving; a message "
        "that would pass it is discarded as it arrives and refused with 452 4.3.1 (the client retries).")
    proxy_protocol_timeout: Duration = Field(5.0, gt=0, description="Time allowed for the PROXY header.")
    max_header_bytes: int = Field(
        256 * 1024, ge=4096, le=16 * 1024 * 1024,
        description="Largest header section of a submitted message (bytes); larger ones are refused with 552.")
    max_header_fields: int = Field(
        1000, ge=16, le=100_000, description="Most header fields of a submitted message; more are refused with 552.")


# --------------------------------------------------------------------------------------------- tenants


class Credential(_Model):
    """One SMTP login of a tenant; only the hash is stored, made with ``hash_password()``."""

    username: str = Field(min_length=1, max_length=256, description="SMTP AUTH username.")
    password_hash: str = Field(
        description="Password hash from smtpinfra_mta.passwords.hash_password(): "
        "'$scrypt$ln=..,r=..,p=..$salt$hash', '$pbkdf2-sha256$rounds$salt$hash' or, for generated passwords of "
        "20+ random characters, '$hmac-sha256$salt$hash'.",
        repr=False,
    )

    @field_validator("username")
    @classmethod
    def _safe_charset(cls, v: str) -> str:
        problem = username_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v

    @field_validator("password_hash")
    @classmethod
    def _known_format(cls, v: str) -> str:
        problem = hash_problem(v)
        if problem is not None:
            raise ValueError(
                f"password_hash is not a supported hash ({problem}); produce it with "
                "smtpinfra_mta.passwords.hash_password()"
            )
        return v


class Quotas(_Model):
    """Submission quotas; exceeding one answers 452 (temporary) so clients retry later.

    Counted in fixed UTC windows, like the warm-up caps, not rolling ones: the counters are two integers
    per tenant that survive restarts, and "N per day" then means what providers' and ESPs' daily limits
    mean. The price is a possible burst of up to 2x a quota across a window boundary.
    """

    per_hour: int | None = Field(
        None, ge=0, description="Messages (per recipient) per UTC clock hour (resets on the hour); null = no limit.")
    per_day: int | None = Field(
        None, ge=0, description="Messages (per recipient) per UTC day (resets at 00:00 UTC); null = no limit.")
    per_hour_share: int | None = Field(
        None, ge=0, description="This replica's part of per_hour when the quota is split between the replicas "
        "(the parts of all replicas sum to per_hour); null: per_hour applies to this replica whole.")
    per_day_share: int | None = Field(
        None, ge=0, description="This replica's part of per_day when the quota is split between the replicas; "
        "null: per_day applies to this replica whole.")

    @model_validator(mode="after")
    def _share_within_quota(self) -> Quotas:
        for share, quota, name in ((self.per_hour_share, self.per_hour, "per_hour"),
                                   (self.per_day_share, self.per_day, "per_day")):
            if share is not None and (quota is None or share > quota):
                raise ValueError(f"{name}_share needs {name} and must not exceed it")
        return self


class Tenant(_Model):
    """A customer account allowed to submit mail."""

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description="Tenant name (DNS label).")
    credentials: list[Credential] = Field(default_factory=list, description="Inline SMTP logins (hashes only).")
    credentials_file: Path | None = Field(
        None,
        description="File of 'username:password_hash' lines mounted from the tenant's credentials Secret; "
        "merged with 'credentials'. Re-read on config reload.",
    )
    sender_domains: list[DomainName] = Field(
        min_length=1,
        description="Domains the tenant may use in MAIL FROM and in the header From "
        "(exact match or a subdomain of one of them).",
    )
    quotas: Quotas = Field(default_factory=Quotas, description="Per-hour / per-day submission quotas.")
    suspended: bool = Field(False, description="A suspended tenant is refused at MAIL FROM with 550 5.7.1.")
    pool: str = Field(description="Name of the IP pool (see 'pools') this tenant's mail leaves from.")
    # -- campaigns and compliance (the Tenant's spec.suspension, filled by the operator)
    suspended_reason: str = Field(
        "", max_length=300, pattern=r"^[^\r\n]*$",
        description="Why the tenant is suspended; quoted in the 550 5.7.1 reply to its submissions.")
    suspension_window: Duration = Field(
        86400.0, gt=0, le=45 * 86400,
        description="Sliding window of the tenant's sent/bounced/complained figures in /stats "
        "(tenants.<name>.window); the Tenant's spec.suspension.window.")


# --------------------------------------------------------------------------------------------- pools


class SourceIp(_Model):
    """A sending address bound for outbound connections, with the EHLO name its PTR record matches."""

    address: IPAddress = Field(description="Local address to bind outbound SMTP connections to.")
    ehlo_name: DomainName = Field(description="Host name sent in EHLO from this address (matches its PTR).")
    quarantined: bool = Field(
        False, description="Listed on a blocklist: nothing leaves from this address; its traffic uses the pool's "
        "other addresses or waits (never bounces). Applied on reload.")
    paused: bool = Field(
        False, description="Paused by the operator: sends nothing, like 'quarantined'. Applied on reload.")


class Pool(_Model):
    """The source IPs of one IpPool assigned to this replica."""

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description="IpPool name.")
    source_ips: list[SourceIp] = Field(min_length=1, description="Source IPs of this pool on this replica.")
    overflow: Literal["wait", "warm-addresses"] = Field(
        "wait",
        description="Traffic beyond the warm-up caps of the pool's warming addresses (those with caps in "
        "throttling.warmup): 'wait' for the next hour/day, or 'warm-addresses' to send it from the pool's "
        "addresses without caps. Never bounced.")


# --------------------------------------------------------------------------------------------- DKIM


class DkimKey(_Model):
    """A DKIM signing key; messages whose header From is in ``domain`` (or a subdomain) get signed."""

    domain: DomainName = Field(description="Signing domain (d=).")
    selector: str = Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62})$", description="Selector (s=).")
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = Field("rsa-sha256", description="Signature algorithm (a=).")
    key_file: Path = Field(
        description="Private key mounted from a Secret: PEM (PKCS#1 or PKCS#8); for ed25519 also the raw base64 seed."
    )
    headers: list[str] = Field(
        default_factory=lambda: [
            "From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "MIME-Version",
            "Content-Type", "Content-Transfer-Encoding", "List-Unsubscribe", "List-Unsubscribe-Post",
            "Feedback-ID",
        ],
        description="Header fields to sign (h=); From is always signed.",
    )


# --------------------------------------------------------------------------------------------- throttling


class Provider(_Model):
    """A mailbox provider recognised by its MX host names (KumoMTA's MX rollup)."""

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description="Provider name, e.g. 'google'.")
    mx_suffixes: list[DomainName] = Field(
        min_length=1,
        description="MX host suffixes; a destination whose MX hosts all end in one of them belongs to the provider, "
        "and shares its limits with every other such destination.",
    )


class ThrottleRule(_Model):
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


class WarmupCap(_Model):
    """A warm-up volume cap for one source IP (optionally only towards one provider). Survives restarts."""

    source_ip: IPAddress = Field(description="Source IP the cap applies to.")
    provider: str | None = Field(None, description="Provider name; null caps all traffic from the IP.")
    per_hour: int | None = Field(None, ge=0, description="Messages per clock hour (UTC).")
    per_day: int | None = Field(None, ge=0, description="Messages per day (UTC).")


class AutomationRule(_Model):
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


class Throttling(_Model):
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


# --------------------------------------------------------------------------------------------- delivery


class Resolver(_Model):
    """The DNS resolver used for MX/A lookups (a cluster-local caching resolver in production)."""

    address: IPAddress | None = Field(None, description="Resolver address; null uses /etc/resolv.conf.")
    port: int = Field(53, ge=1, le=65535, description="Resolver port.")
    timeout: Duration = Field(5.0, gt=0, description="Lifetime of one lookup.")


class TlsPolicy(_Model):
    """Outbound STARTTLS policy for one destination domain."""

    domain: DomainName = Field(description="Recipient domain.")
    mode: Literal["opportunistic", "required"] = Field(description="'required' defers instead of sending in clear.")
    verify: bool = Field(False, description="Verify the MX certificate and host name (with mode 'required').")


class Route(_Model):
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
            return str(_normalise_domain(v))


class Delivery(_Model):
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


class Spool(_Model):
    directory: Path = Field(Path("/var/spool/smtp-infra"), description="Spool directory (the replica's PVC).")
    fsync: bool = Field(True, description="fsync before acknowledging; only tests may turn this off.")
    group_commit_window: Duration = Field(
        0.002, ge=0, le=1, description="How long a commit waits to batch other sessions' messages into one fsync."
    )
    idempotency_retention: Duration = Field(
        86400.0, gt=0, description="How long a (tenant, idempotency key) pair is remembered after acceptance."
    )


class Suppression(_Model):
    url: str = Field(
        "sqlite:///var/spool/smtp-infra/suppression.db",
        description="Database for suppression lists: 'sqlite:///path' (embedded default) or "
        "'postgresql://user@host/db' (shared by replicas; password from PGPASSWORD / a mounted file).",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not v.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("suppression url must start with 'sqlite:///' or 'postgresql://'")
        return v


class Unsubscribe(_Model):
    """One-click unsubscribes (RFC 8058) served by the MTA pods for the campaigns they send."""

    keys: list[Path] = Field(
        default_factory=list,
        description="Files holding the unsubscribe token keys (the current one first, then previous ones still "
        "accepted), mounted from the server's Secret. Empty: /unsubscribe/ answers 404.")
    listener: Literal["http"] = Field(
        "http", description="The HTTP listener serving /unsubscribe/<token>: the pods' http.port listener.")
    erasure_salt_file: Path | None = Field(
        None,
        description="Secret from which each tenant's erasure-hash salt is derived (shared by the replicas); "
        "null: a key generated once in the spool directory (one replica only).")


class QuotaStore(_Model):
    url: str | None = Field(
        None,
        description="PostgreSQL database the replicas share for exact quota counters ('postgresql://user@host/db'; "
        "password from PGPASSWORD / a mounted file). Null: each replica counts in its spool and enforces its "
        "share of each quota (Quotas.per_hour_share / per_day_share).",
    )

    @field_validator("url")
    @classmethod
    def _postgres_only(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("quota_store url must start with 'postgresql://'")
        return v


class Http(_Model):
    bind: IPAddress = Field("0.0.0.0", description="Address of the metrics/health HTTP server.")
    port: int = Field(8080, ge=1, le=65535, description="Port of /metrics, /healthz, /readyz and /stats.")
    delivery_port: int = Field(
        8081, ge=1, le=65535,
        description="Port of the delivery process's /metrics, /healthz and /stats (delivery.separate_process).",
    )
    mta_sts_port: int | None = Field(
        None, ge=1, le=65535,
        description="HTTPS port (certificate from 'tls') that serves only /.well-known/mta-sts.txt, for "
        "https://mta-sts.<domain>/ (RFC 8461 section 3.3); null: no HTTPS listener. Needs 'mta_sts' and 'tls'.",
    )
    stats_token_file: Path | None = Field(
        None,
        description="File holding the bearer token /stats requires ('Authorization: Bearer <token>'), mounted "
        "from a Secret only the operator reads; re-read per request. Null: /stats is open (local runs only).",
    )
    max_connections: int = Field(
        128, ge=1, le=100_000, description="Concurrent connections per HTTP listener; more are closed at once.")
    request_timeout: Duration = Field(
        10.0, gt=0, le=300, description="Time a client has to send its whole request (and TLS handshake).")


class Bounces(_Model):
    return_path_domain: DomainName | None = Field(
        None, description="Domain of the MTA's own address used as From of DSNs (MAILER-DAEMON@<domain>), and "
        "of the VERP return paths. Must also be in listeners.inbound.domains to receive bounces/complaints.",
    )
    verp: bool = Field(
        True,
        description="Send tenant mail with a per-recipient return path 'bounces+<token>@<return_path_domain>' "
        "(when return_path_domain is set and received on port 25), so asynchronous DSNs and ARF complaints are "
        "matched to tenant and recipient; hard bounces and complaints then join the tenant's suppression list. "
        "Each recipient is sent in its own transaction.",
    )
    verp_key_file: Path | None = Field(
        None,
        description="HMAC key authenticating VERP tokens (mount the same Secret in every replica). Null: a key is "
        "generated once in the spool directory (fine for one replica). 'verp_key_files' wins when set.",
    )
    # --- inbound reports: VERP keys shared by the replicas, bounded parsing, quarantine ---------------
    verp_key_files: list[Path] = Field(
        default_factory=list,
        description="VERP keys shared by every replica (the operator mounts its '<server>-verp' Secret): the "
        "first existing file signs, every existing one verifies, so return paths signed before a rotation "
        "still match. Missing files are skipped (no 'previous' key before the first rotation). Re-read on reload.",
    )
    report_max_bytes: int = Field(
        128 * 1024, ge=4096, le=32 * 1024 * 1024,
        description="Only this many leading bytes of an inbound report are parsed: the DSN/ARF parts and the "
        "quoted headers come first, and a bound keeps hostile input from costing unbounded parse time.",
    )
    report_parse_timeout: Duration = Field(
        5.0, gt=0, le=300,
        description="Time limit for parsing one inbound report in a worker process; a report that takes longer "
        "is quarantined and the worker replaced.",
    )
    report_workers: int = Field(1, ge=1, le=8, description="Worker processes parsing inbound reports.")
    report_retry_limit: Duration = Field(
        3600.0, gt=0,
        description="How long a report whose suppression insert fails is retried before it is quarantined.",
    )
    quarantine_max_bytes: int = Field(
        256 * 1024 * 1024, ge=0,
        description="Size bound of the spool's quarantine/ area (inbound reports that could not be handled, kept "
        "for inspection); the oldest entries go first. 0 keeps none.",
    )
    quarantine_max_age: Duration = Field(
        7 * 86400.0, gt=0, description="Quarantined reports older than this are deleted.")

    @model_validator(mode="after")
    def _one_key_source(self) -> Bounces:
        if self.verp_key_file is not None and self.verp_key_files:
            raise ValueError("set verp_key_file or verp_key_files, not both")
        return self


_STS_MODES = ("enforce", "testing", "none")
_STS_MAX_AGE = 31557600  # RFC 8461 section 3.2: at most one year
_STS_MX_RE = re.compile(r"^(\*\.)?([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class MtaSts(_Model):
    """The MTA-STS policy (RFC 8461) the operator computed; the HTTP endpoints serve it verbatim."""

    policy: str = Field(
        min_length=1, max_length=65536,
        description="The policy file served at /.well-known/mta-sts.txt (RFC 8461 section 3.2): 'version: STSv1', "
        "'mode', one 'mx' line per allowed MX host and 'max_age', one 'key: value' per line. Its id is "
        "published in the _mta-sts TXT record, so it is served exactly as given.",
    )

    @field_validator("policy")
    @classmethod
    def _valid_policy(cls, v: str) -> str:
        if len(v.encode()) > 65536:
            raise ValueError("the MTA-STS policy must not exceed 64 KiB (RFC 8461 section 3.3)")
        fields: dict[str, list[str]] = {}
        for line in v.replace("\r\n", "\n").split("\n"):
            if not line.strip():
                continue
            key, sep, value = line.partition(":")
            if not sep or not key.strip():
                raise ValueError(f"MTA-STS policy line {line!r} is not 'key: value'")
            fields.setdefault(key.strip(), []).append(value.strip())
        for key in ("version", "mode", "max_age"):
            if len(fields.get(key, [])) != 1:
                raise ValueError(f"the MTA-STS policy needs exactly one '{key}' line")
        if fields["version"] != ["STSv1"]:
            raise ValueError("MTA-STS policy version must be 'STSv1'")
        mode = fields["mode"][0]
        if mode not in _STS_MODES:
            raise ValueError(f"MTA-STS mode must be one of {', '.join(_STS_MODES)}, not {mode!r}")
        max_age = fields["max_age"][0]
        if not (max_age.isascii() and max_age.isdigit() and len(max_age) <= 10 and int(max_age) <= _STS_MAX_AGE):
            raise ValueError(f"MTA-STS max_age must be a number of seconds up to {_STS_MAX_AGE}, not {max_age!r}")
        mx = fields.get("mx", [])
        if not mx and mode != "none":
            raise ValueError(f"an MTA-STS policy in mode {mode!r} needs at least one 'mx' line")
        for pattern in mx:
            if not _STS_MX_RE.match(pattern.lower()):
                raise ValueError(f"MTA-STS mx {pattern!r} is not a host name or a '*.' wildcard pattern")
        return v


# --------------------------------------------------------------------------------------------- clock


class ClockSettings(_Model):
    """Day and hour boundaries of warm-up caps and per-address figures.

    The time itself comes from the system clock, or from the file named by SMTP_INFRA_FAKE_TIME_FILE
    (tests): see smtpinfra_mta.clock.
    """

    timezone: str = Field("UTC", description="IANA time zone whose midnight starts a new warm-up day.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {v!r}") from exc
        return v

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


# --------------------------------------------------------------------------------------------- root


class MtaConfig(_Model):
    """The whole config of one MTA replica."""

    version: Literal[1] = Field(1, description="Schema version of this file.")
    hostname: DomainName = Field(description="This replica's host name (SMTP banner, Received, Reporting-MTA).")
    listeners: Listeners = Field(default_factory=Listeners, description="SMTP listeners.")
    tls: TlsFiles | None = Field(None, description="Server certificate for STARTTLS/implicit TLS.")
    limits: SmtpLimits = Field(default_factory=SmtpLimits, description="Session limits.")
    tenants: list[Tenant] = Field(default_factory=list, description="Tenants allowed to submit.")
    pools: list[Pool] = Field(default_factory=list, description="IP pools (source IPs) on this replica.")
    dkim: list[DkimKey] = Field(default_factory=list, description="DKIM signing keys.")
    throttling: Throttling = Field(default_factory=Throttling, description="Traffic shaping and warm-up.")
    delivery: Delivery = Field(default_factory=Delivery, description="Outbound delivery.")
    spool: Spool = Field(default_factory=Spool, description="Durable message spool.")
    suppression: Suppression = Field(default_factory=Suppression, description="Suppression list database.")
    quota_store: QuotaStore = Field(default_factory=QuotaStore, description="Shared quota counters (optional).")
    http: Http = Field(default_factory=Http, description="Metrics and health endpoints.")
    bounces: Bounces = Field(default_factory=Bounces, description="DSN settings.")
    mta_sts: MtaSts | None = Field(
        None, description="MTA-STS policy served at /.well-known/mta-sts.txt; null: that path answers 404.")
    unsubscribe: Unsubscribe = Field(default_factory=Unsubscribe,
                                     description="One-click unsubscribe endpoint and erasure hashes.")
    clock: ClockSettings = Field(default_factory=ClockSettings, description="Day boundaries (time zone).")

    @model_validator(mode="after")
    def _cross_checks(self) -> MtaConfig:
        pools = [p.name for p in self.pools]
        if len(set(pools)) != len(pools):
            raise ValueError("pool names must be unique")
        addrs = [ip.address for p in self.pools for ip in p.source_ips]
        if len(set(addrs)) != len(addrs):
            raise ValueError("a source IP may belong to only one pool")
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ValueError("tenant names must be unique")
        users: dict[str, str] = {}
        domains: dict[str, str] = {}
        for t in self.tenants:
            if t.pool not in pools:
                raise ValueError(f"tenant {t.name!r} uses pool {t.pool!r}, which is not in 'pools' {pools}")
            for c in t.credentials:
                if c.username in users:
                    raise ValueError(f"username {c.username!r} is used by tenants {users[c.username]!r} and {t.name!r}")
                users[c.username] = t.name
            for d in t.sender_domains:
                if d in domains and domains[d] != t.name:
                    raise ValueError(f"sender domain {d!r} is claimed by tenants {domains[d]!r} and {t.name!r}")
                domains[d] = t.name
        keys = [(k.domain, k.selector) for k in self.dkim]
        if len(set(keys)) != len(keys):
            raise ValueError("DKIM (domain, selector) pairs must be unique")
        wants_tls = self.listeners.submission.enabled or self.listeners.implicit_tls.enabled
        if wants_tls and self.tls is None:
            raise ValueError("listeners.submission/implicit_tls need 'tls' (cert_file and key_file)")
        inbound = self.listeners.inbound
        if inbound.enabled and not inbound.domains:
            raise ValueError("listeners.inbound is enabled but has no 'domains' (the bounce/FBL domains)")
        relay = [r.domain for r in inbound.relay_domains]
        if len(set(relay)) != len(relay):
            raise ValueError("listeners.inbound.relay_domains: each domain may be listed once")
        for r in inbound.relay_domains:
            if r.pool not in pools:
                raise ValueError(f"relay domain {r.domain!r} uses pool {r.pool!r}, which is not in 'pools' {pools}")
            if r.domain in inbound.domains:
                raise ValueError(f"{r.domain!r} is both a bounce/FBL domain and a relay domain; pick one")
        if self.http.mta_sts_port is not None and (self.mta_sts is None or self.tls is None):
            raise ValueError("http.mta_sts_port (the HTTPS policy listener) needs 'mta_sts' and 'tls'")
        if self.http.mta_sts_port is not None and self.http.mta_sts_port in (self.http.port, self.http.delivery_port):
            raise ValueError("http.mta_sts_port must differ from http.port and http.delivery_port")
        routed = [r.domain for r in self.delivery.routes]
        if len(set(routed)) != len(routed):
            raise ValueError("delivery.routes: each domain may have one route")
        return self

    # Lookups used on hot paths; cheap enough to compute per call at config sizes we expect.
    def pool(self, name: str) -> Pool:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def relay_domain(self, domain: str) -> RelayDomain | None:
        for r in self.listeners.inbound.relay_domains:
            if r.domain == domain:
                return r
        return None

    def route(self, domain: str) -> Route | None:
        for r in self.delivery.routes:
            if r.domain == domain:
                return r
        return None

    def tenant(self, name: str) -> Tenant:
        for t in self.tenants:
            if t.name == name:
                return t
        raise KeyError(name)


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s) in the MTA config:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>") -> MtaConfig:
    """Validate already-parsed YAML/JSON data; raises :class:`ConfigError` with one line per problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the MTA config must be a mapping at the top level")
    try:
        return MtaConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def load_config(path: Path | str) -> MtaConfig:
    """Read and validate the YAML config file the operator renders."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    cfg = parse_config(data, str(p))
    listen = os.environ.get(LISTEN_ADDRESS_ENV)
    return with_listen_address(cfg, listen) if listen else cfg


LISTEN_ADDRESS_ENV = "SMTP_INFRA_LISTEN_ADDRESS"
"""Set by the pod spec from status.podIP: every listener and the HTTP endpoint bind to that address.

One rendered config serves pods whose addresses are only known when they start; applying the
override in the loader keeps it across reloads.
"""


def with_listen_address(cfg: MtaConfig, address: str) -> MtaConfig:
    """The config with every listener and the HTTP server bound to `address` only."""
    try:
        bound = str(ipaddress.ip_address(address))
    except ValueError:
        raise ConfigError(f"{LISTEN_ADDRESS_ENV}={address!r} is not an IP address") from None
    listeners = cfg.listeners.model_copy(update={
        name: getattr(cfg.listeners, name).model_copy(update={"bind": [bound]})
        for name in ("submission", "implicit_tls", "inbound")
    })
    return cfg.model_copy(update={"listeners": listeners, "http": cfg.http.model_copy(update={"bind": bound})})


def dump_config(cfg: MtaConfig) -> str:
    """Render a config as YAML (what the operator writes into the ConfigMap).

    libyaml's emitter where PyYAML has it: the pure-Python one was a seventh of the operator's CPU
    when 200 servers were created at once.
    """
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(cfg.model_dump(mode="json", exclude_none=True), Dumper=dumper, sort_keys=False)
