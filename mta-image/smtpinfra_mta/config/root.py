"""The root of the MTA config, and loading, validating and rendering it."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from .bounces import Bounces
from .delivery import Delivery, Route
from .dkim import DkimKey
from .endpoints import Http, MtaSts, Unsubscribe
from .listeners import Listeners, RelayDomain, SmtpLimits, TlsFiles
from .stores import QuotaStore, Spool, Suppression
from .tenants import Pool, Tenant
from .throttling import Throttling
from .types import ConfigError, DomainName, Section


class ClockSettings(Section):
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


class MtaConfig(Section):
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
        if self.listeners.processes > 1 and not self.delivery.separate_process:
            raise ValueError("listeners.processes above 1 needs delivery.separate_process: true (the receiving "
                             "processes hand their mail to one delivery process)")
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
    """Read and validate a config file: JSON as the operator renders it, or YAML written by hand."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)  # what the operator writes
    except ValueError:
        try:
            data = yaml.safe_load(text)  # a hand-written config
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
    """Render a config as indented JSON, which is YAML too (what the operator writes into the ConfigMap).

    Not PyYAML: even with libyaml's emitter its representer is Python, and was the largest single
    cost of the operator's CPU when 200 servers were created at once (json is 5 times faster).
    ASCII only, so any YAML reader takes it; `load_config` reads it as JSON.
    """
    return json.dumps(cfg.model_dump(mode="json", exclude_none=True), indent=1) + "\n"
