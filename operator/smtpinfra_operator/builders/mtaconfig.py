"""SmtpServer spec + served tenants + address assignment → one MTA config per replica.

The result is the MTA's own pydantic model (`smtpinfra_mta.config.MtaConfig`): the contract
between operator and MTA is one module both import, so a config the MTA would refuse fails
here, in the operator, with the same message.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from smtpinfra_api.meta import parse_duration, parse_quantity
from smtpinfra_api.v1alpha1 import DkimKey, MailboxProvider, ShapingRule, SmtpServerSpec, TenantSpec
from smtpinfra_mta.config import MtaConfig, dump_config, parse_config

from ..dns.records import inputs_from_spec, mta_sts_policy_text

CONFIG_DIR = PurePosixPath("/etc/smtp-infra/config")
CREDENTIALS_DIR = PurePosixPath("/etc/smtp-infra/credentials")
TLS_DIR = PurePosixPath("/etc/smtp-infra/tls")
DKIM_DIR = PurePosixPath("/etc/smtp-infra/dkim")
VERP_DIR = PurePosixPath("/etc/smtp-infra/verp")
"""The server's VERP key Secret (``builders/verp.py``): ``current`` signs, ``previous`` still verifies."""
UNSUBSCRIBE_DIR = PurePosixPath("/etc/smtp-infra/unsubscribe")
UNSUBSCRIBE_KEY_FILE = UNSUBSCRIBE_DIR / "key"
"""The server's unsubscribe key Secret (``builders/unsubscribe.py``): signs the campaigns' unsubscribe links."""
ERASURE_SALT_FILE = UNSUBSCRIBE_DIR / "erasure-salt"
"""From the same Secret: the secret every replica derives a tenant's erasure-hash salt from."""
SPOOL_DIR = PurePosixPath("/var/spool/smtp-infra")
STATS_TOKEN_FILE = PurePosixPath("/etc/smtp-infra/stats/token")
HANDOFF_TOKEN_FILE = STATS_TOKEN_FILE.parent / "handoff"
"""The token replicas of one server present when they hand each other mail (same operator-managed Secret)."""
"""The bearer token /stats requires, mounted from the operator-managed `<server>-stats-token` Secret."""
HTTP_PORT = 8080
DELIVERY_HTTP_PORT = 8081
"""Metrics and health of the MTA's delivery process (the pods run receiving and delivery as two processes)."""
MTA_STS_PORT = 8443
"""Container port of the MTA-STS HTTPS listener; the Services expose it as 443 (https://mta-sts.<domain>/)."""

# MX host suffixes of the mailbox providers warm-up plans name (KumoMTA's rollup idea).
PROVIDER_MX_SUFFIXES: dict[MailboxProvider, list[str]] = {
    MailboxProvider.GMAIL: ["google.com", "googlemail.com"],
    MailboxProvider.YAHOO: ["yahoodns.net"],
    MailboxProvider.MICROSOFT: ["outlook.com"],
    MailboxProvider.APPLE: ["icloud.com"],
    MailboxProvider.COMCAST: ["comcast.net"],
}


@dataclass(frozen=True)
class ServedTenant:
    """A tenant this server serves, with what the MTA needs of it."""

    name: str
    spec: TenantSpec
    pool: str
    """The IpPool its mail leaves from (its dedicated pool, or the server's first pool)."""
    suspended_reason: str = ""
    """Why the operator suspended the tenant (its complaint or bounce rate); empty: not suspended by it."""

    @property
    def suspended(self) -> bool:
        """Suspended by its spec, or by the operator for its rates (`campaigns.suspension`)."""
        return self.spec.suspended or bool(self.suspended_reason)


@dataclass(frozen=True)
class SourceAddress:
    """One sending address of one replica."""

    pool: str
    address: str
    ehlo_name: str
    daily_cap: int | None = None
    """Today's warm-up cap; None when the address is not warming up."""
    hourly_cap: int | None = None
    provider_caps: tuple[tuple[MailboxProvider, int], ...] = ()
    quarantined: bool = False
    """Listed (the blocklist monitor's verdict on the pool's status): sends nothing."""
    paused: bool = False
    """Named in the pool's spec.paused: sends nothing."""
    overflow: str = "wait"
    """The pool's overflow policy as the MTA spells it ('wait' or 'warm-addresses')."""
    move_when_blocked: bool = True
    """The pool's quarantine.queuedMail is Move: a replica whose address may not send hands its mail over."""


@dataclass(frozen=True)
class ServerInputs:
    """Everything the builders need, gathered by the handler."""

    name: str
    namespace: str
    spec: SmtpServerSpec
    tenants: list[ServedTenant]
    replica_addresses: dict[int, list[SourceAddress]]
    """Ordinal → one address per pool, for the replicas that have all their addresses."""
    extra: dict[str, Any] = field(default_factory=dict)


def dkim_key_path(key: DkimKey) -> PurePosixPath:
    """Where a DKIM private key is mounted in the pod."""
    return DKIM_DIR / f"{key.domain}.{key.selector}" / "private.pem"


def credentials_path(tenant: str) -> PurePosixPath:
    """Where a tenant's `username:hash` line is mounted in the pod."""
    return CREDENTIALS_DIR / tenant


def _rule(scope: str, match: str | None, rule: ShapingRule) -> dict[str, Any] | None:
    values = {
        "connection_limit": rule.connection_limit,
        "max_message_rate": rule.max_message_rate,
        "max_connection_rate": rule.max_connection_rate,
        "max_deliveries_per_connection": rule.max_deliveries_per_connection,
    }
    values = {k: v for k, v in values.items() if v is not None}
    if not values and scope != "default":
        return None
    out: dict[str, Any] = {"scope": scope, **values}
    if match is not None:
        out["match"] = match
    return out


def throttling(spec: SmtpServerSpec, addresses: list[SourceAddress]) -> dict[str, Any]:
    """The MTA's throttling section: shaping rules, MX rollup providers, warm-up caps, automation."""
    shaping = spec.throttling
    providers: dict[str, list[str]] = {p.name: list(p.mx_suffixes) for p in shaping.providers}
    warm_providers = {p for a in addresses for p, _ in a.provider_caps}
    for provider in sorted(warm_providers):
        providers.setdefault(provider.value, PROVIDER_MX_SUFFIXES.get(provider, []))
    rules = [_rule("default", None, shaping.default)]
    rules += [_rule("domain", d.domain, d) for d in shaping.domains]
    rules += [_rule("provider", p.name, p) for p in shaping.providers]
    rules += [_rule("source_ip", s.address, s) for s in shaping.sources]
    warmup: list[dict[str, Any]] = []
    for address in addresses:
        if address.daily_cap is not None:
            warmup.append({"source_ip": address.address, "per_day": address.daily_cap,
                           "per_hour": address.hourly_cap})
        for provider, cap in address.provider_caps:
            if providers.get(provider.value):
                warmup.append({"source_ip": address.address, "provider": provider.value, "per_day": cap})
    automation = [
        {
            "name": a.name,
            "regex": a.match,
            "action": a.action.value.lower(),
            "duration": parse_duration(a.duration),
            **({"max_message_rate": a.max_message_rate} if a.max_message_rate else {}),
        }
        for a in shaping.automation
    ]
    return {
        "providers": [{"name": n, "mx_suffixes": s} for n, s in providers.items() if s],
        "rules": [r for r in rules if r is not None],
        "warmup": [{k: v for k, v in w.items() if v is not None} for w in warmup],
        "automation": automation,
    }


def serves_mta_sts_https(spec: SmtpServerSpec) -> bool:
    """Whether the MTA opens the HTTPS listener of the MTA-STS policy (it needs the TLS certificate)."""
    return spec.dns.mta_sts and spec.tls is not None


def mta_sts_policy_for(spec: SmtpServerSpec) -> str:
    """The MTA-STS policy the MTA serves: the very text whose id the DNS builder publishes in _mta-sts."""
    return mta_sts_policy_text(inputs_from_spec("", spec, sending=()))


def session_limits(spec: SmtpServerSpec) -> dict[str, Any]:
    """spec.limits in the MTA's terms; unset fields are left out so the MTA's defaults apply."""
    out: dict[str, Any] = {}
    for kind in ("submission", "implicit_tls", "inbound"):
        lim = getattr(spec.limits, kind)
        values = {"max_connections": lim.max_connections, "max_connections_per_ip": lim.max_connections_per_ip,
                  "idle_timeout": parse_duration(lim.idle_timeout) if lim.idle_timeout else None,
                  "session_time_limit": parse_duration(lim.session_time_limit) if lim.session_time_limit else None}
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            out[kind] = values
    if spec.limits.max_data_memory is not None:
        out["max_data_memory"] = spec.limits.max_data_memory
    return out


def quota_share(quota: int | None, replicas: int, ordinal: int) -> int | None:
    """Replica ``ordinal``'s part of a quota split between ``replicas``: the parts sum exactly to the quota.

    Each replica counts alone, so a quota enforced whole by every replica allowed quota x replicas. With
    shares the total can never exceed the quota (worst-case overshoot 0); a replica whose share is used up
    answers 452 and the client retries, possibly on another replica. The price is that a tenant whose
    connections all land on one replica gets only that replica's share until the window turns.
    """
    if quota is None or replicas <= 1:
        return None
    return quota // replicas + (1 if ordinal < quota % replicas else 0)


def _quotas(t: ServedTenant, replicas: int, ordinal: int) -> dict[str, int | None]:
    q = t.spec.quotas
    out: dict[str, int | None] = {"per_hour": q.per_hour, "per_day": q.per_day}
    for name, quota in (("per_hour_share", q.per_hour), ("per_day_share", q.per_day)):
        share = quota_share(quota, replicas, ordinal)
        if share is not None:
            out[name] = share
    return out


def _suspension_fields(t: ServedTenant) -> dict[str, Any]:
    """The reason the MTA quotes in its 550, and the window it counts the tenant's rates over."""
    out: dict[str, Any] = {"suspension_window": parse_duration(t.spec.suspension.window)}
    if t.suspended:
        out["suspended_reason"] = (t.suspended_reason or "suspended by the platform (spec.suspended)")[:300]
    return out


def headless_service_name(server: str) -> str:
    """The StatefulSet's governing Service, which gives each pod its DNS name."""
    return f"{server}-pods"


def peer_host(server: str, namespace: str, ordinal: int) -> str:
    """The DNS name of one replica's pod (StatefulSet pod name under the headless Service)."""
    return f"{server}-{ordinal}.{headless_service_name(server)}.{namespace}.svc"


def peers(inputs: ServerInputs, ordinal: int) -> dict[str, list[dict[str, Any]]]:
    """Per pool, the other replicas whose address of it may send: where this replica hands over mail its own
    address may not send (quarantined, paused, or over a warming cap when the pool overflows)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for other, addresses in sorted(inputs.replica_addresses.items()):
        if other == ordinal:
            continue
        for a in addresses:
            if not a.quarantined and not a.paused:
                out.setdefault(a.pool, []).append({"host": peer_host(inputs.name, inputs.namespace, other),
                                                   "port": DELIVERY_HTTP_PORT, "warm": a.daily_cap is None})
    return out


MAX_RECEIVING_PROCESSES = 16


def receiving_processes(spec: SmtpServerSpec) -> int:
    """Receiving processes per pod from its CPU request (or limit): one core stays for the delivery process.

    With 2 cores or less, one receiving and one delivering process (measured to relay fastest there,
    bench/mta_throughput.py); each further requested core adds a receiving process, up to 16.
    """
    cpu = spec.resources.requests.cpu or spec.resources.limits.cpu
    if cpu is None:
        return 1
    cores = math.ceil(parse_quantity(cpu) - 1e-9)
    return max(1, min(MAX_RECEIVING_PROCESSES, cores - 1))


def replica_config(inputs: ServerInputs, ordinal: int) -> MtaConfig:
    """The MTA config of one replica (validated by the MTA's own model)."""
    spec = inputs.spec
    addresses = inputs.replica_addresses[ordinal]
    pools: dict[str, list[dict[str, Any]]] = {}
    policy: dict[str, dict[str, Any]] = {}
    for a in addresses:
        pools.setdefault(a.pool, []).append({"address": a.address, "ehlo_name": a.ehlo_name,
                                             "quarantined": a.quarantined, "paused": a.paused})
        policy[a.pool] = {"overflow": a.overflow, "move_when_blocked": a.move_when_blocked}
    peers_of = peers(inputs, ordinal)
    listeners = spec.listeners
    data: dict[str, Any] = {
        "version": 1,
        "hostname": spec.hostname,
        "listeners": {
            "submission": {"enabled": listeners.submission.enabled, "port": listeners.submission.port,
                           "proxy_protocol": listeners.proxy_protocol},
            "implicit_tls": {"enabled": listeners.implicit_tls.enabled, "port": listeners.implicit_tls.port,
                             "proxy_protocol": listeners.proxy_protocol},
            "inbound": {"enabled": listeners.inbound.enabled, "port": listeners.inbound.port,
                        "proxy_protocol": listeners.proxy_protocol, "domains": [spec.return_path_domain]},
            "processes": receiving_processes(spec),
        },
        "limits": {"max_message_size": listeners.max_message_size, "max_recipients": listeners.max_recipients,
                   **session_limits(spec)},
        "tenants": [
            {
                "name": t.name,
                "credentials_file": str(credentials_path(t.name)),
                "sender_domains": list(t.spec.sender_domains),
                "quotas": _quotas(t, spec.replicas, ordinal),
                "suspended": t.suspended,
                **_suspension_fields(t),
                "pool": t.pool,
            }
            for t in inputs.tenants
        ],
        "pools": [{"name": name, "source_ips": ips, **policy[name], "peers": peers_of.get(name, [])}
                  for name, ips in pools.items()],
        "dkim": [
            {"domain": k.domain, "selector": k.selector, "algorithm": k.algorithm.value,
             "key_file": str(dkim_key_path(k))}
            for k in spec.dkim.keys
        ],
        "throttling": throttling(spec, addresses),
        "delivery": {
            # Receiving and delivering in two processes: a replica uses two cores, and measured end to end
            # it relays markedly faster than one process (bench/mta_throughput.py).
            "separate_process": True,
            "port": spec.delivery.remote_port,
            "max_queue_age": parse_duration(spec.delivery.max_queue_age),
            "starttls": spec.delivery.starttls.value,
            **({"resolver": {"address": spec.delivery.resolver.address, "port": spec.delivery.resolver.port}}
               if spec.delivery.resolver else {}),
        },
        "spool": {"directory": str(SPOOL_DIR)},
        "suppression": {"url": f"sqlite://{SPOOL_DIR}/suppression.db"},
        "http": {"port": HTTP_PORT, "delivery_port": DELIVERY_HTTP_PORT, "stats_token_file": str(STATS_TOKEN_FILE),
                 "handoff_token_file": str(HANDOFF_TOKEN_FILE)},
        "bounces": {"return_path_domain": spec.return_path_domain,
                    # the signing key first; "previous" exists only after a rotation
                    "verp_key_files": [str(VERP_DIR / "current"), str(VERP_DIR / "previous")]},
    }
    # the server's unsubscribe Secret (builders/unsubscribe.py): link key, erasure salt shared by the replicas
    data["unsubscribe"] = {"keys": [str(UNSUBSCRIBE_KEY_FILE)], "erasure_salt_file": str(ERASURE_SALT_FILE)}
    if spec.tls is not None:
        data["tls"] = {"cert_file": str(TLS_DIR / "tls.crt"), "key_file": str(TLS_DIR / "tls.key")}
    if spec.dns.mta_sts:
        data["mta_sts"] = {"policy": mta_sts_policy_for(spec)}
        if serves_mta_sts_https(spec):
            data["http"]["mta_sts_port"] = MTA_STS_PORT
    # The MTA's own parser: a config it would refuse fails here with its message (ConfigError).
    return parse_config(data, source=f"{inputs.name}-{ordinal}.yaml")


def config_map_data(inputs: ServerInputs) -> dict[str, str]:
    """ConfigMap data: one `<pod-name>.yaml` per replica, so each pod reads its own section."""
    return {
        f"{inputs.name}-{ordinal}.yaml": dump_config(replica_config(inputs, ordinal))
        for ordinal in sorted(inputs.replica_addresses)
    }


def content_hash(data: dict[str, str]) -> str:
    """A stable digest of string data (ConfigMap or Secret contents)."""
    digest = hashlib.sha256()
    for key in sorted(data):
        digest.update(key.encode() + b"\0" + data[key].encode() + b"\0")
    return digest.hexdigest()[:16]
