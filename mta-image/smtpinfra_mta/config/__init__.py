"""The MTA configuration schema: the contract between the operator and the MTA.

The operator renders an :class:`MtaConfig` into a ConfigMap as YAML (``model_dump(mode="json")``);
the MTA loads it with :func:`load_config`. Secrets (TLS key, DKIM keys, credential hashes) are
referenced by file path, because they are mounted from Kubernetes Secrets next to the ConfigMap.
Every model forbids unknown fields so a typo in the rendered config fails loudly instead of being
silently ignored.

One module per section; this package is the contract the operator imports (the import-linter
contract allows it and nothing else of the MTA), so everything is re-exported here.
"""

from __future__ import annotations

from smtpinfra_mta.clock import FAKE_TIME_ENV, clock_from_env
from smtpinfra_mta.contract import credential_problem, username_problem

# Scheme and hash_password are re-exported: the operator hashes tenants' credentials with them, and
# validates tenant-provided ones with credential_problem.
from smtpinfra_mta.passwords import Scheme, hash_password, hash_problem, verify_password

from .bounces import Bounces
from .delivery import Delivery, Resolver, Route, TlsPolicy
from .dkim import DkimKey
from .endpoints import Http, MtaSts, Unsubscribe
from .listeners import (
    ImplicitTlsListener,
    InboundListener,
    ListenerBase,
    ListenerLimits,
    Listeners,
    RelayDomain,
    SmtpLimits,
    SubmissionListener,
    TlsFiles,
)
from .root import (
    LISTEN_ADDRESS_ENV,
    ClockSettings,
    MtaConfig,
    dump_config,
    load_config,
    parse_config,
    with_listen_address,
)
from .stores import QuotaStore, Spool, Suppression
from .tenants import Credential, Peer, Pool, Quotas, SourceIp, Tenant
from .throttling import AutomationRule, Provider, ThrottleRule, Throttling, WarmupCap
from .types import DEFAULT_CONFIG_PATH, ConfigError, DomainName, Duration, IPAddress, Rate, Section

# The clock is part of the contract: the operator judges warm-up days by the same (test) clock as the MTAs.
__all__ = [
    "DEFAULT_CONFIG_PATH", "FAKE_TIME_ENV", "LISTEN_ADDRESS_ENV",
    "AutomationRule", "Bounces", "ClockSettings", "ConfigError", "Credential", "Delivery", "DkimKey",
    "DomainName", "Duration", "Http", "IPAddress", "ImplicitTlsListener", "InboundListener", "ListenerBase",
    "ListenerLimits", "Listeners", "MtaConfig", "MtaSts", "Peer", "Pool", "Provider", "QuotaStore", "Quotas", "Rate",
    "RelayDomain", "Resolver", "Route", "Scheme", "Section", "SmtpLimits", "SourceIp", "Spool",
    "SubmissionListener", "Suppression", "Tenant", "ThrottleRule", "Throttling", "TlsFiles", "TlsPolicy",
    "Unsubscribe", "WarmupCap",
    "clock_from_env", "credential_problem", "dump_config", "hash_password", "hash_problem", "load_config",
    "parse_config", "username_problem", "verify_password", "with_listen_address",
]
