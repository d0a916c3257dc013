"""smtpinfra.com/v1alpha1: SmtpServer, IpPool, WarmupPlan, Tenant and Campaign.

Field docstrings are the descriptions `kubectl explain` prints. Rules the OpenAPI schema can
express are here (patterns, enums, ranges, CEL); rules that need arithmetic over whole lists
(a warm-up schedule that grows) are checked by the operator and reported on status.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import Field

from .meta import (
    DNS_LABEL_PATTERN,
    ApiModel,
    CommonStatus,
    DnsLabel,
    Duration,
    Email,
    Fqdn,
    NamespacedObjectReference,
    ObjectName,
    Percent,
    Quantity,
    ScopeName,
    SecretKeyReference,
    StatusModel,
    cel,
)

# ============================================================================================
# Shared pieces
# ============================================================================================

_SET = {"x-kubernetes-list-type": "set"}


def _map_list(*keys: str) -> dict[str, Any]:
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


class MailboxProvider(StrEnum):
    """Mailbox providers with their own limits; MX host suffixes identify them."""

    GMAIL = "gmail"
    YAHOO = "yahoo"
    MICROSOFT = "microsoft"
    APPLE = "apple"
    COMCAST = "comcast"
    OTHER = "other"


# ============================================================================================
# SmtpServer
# ============================================================================================


class ListenerSpec(ApiModel):
    """One SMTP listener of the MTA."""

    enabled: bool = True
    """Whether the listener is opened."""
    port: Annotated[int, Field(ge=1, le=65535)]
    """Container port the listener binds."""


class SubmissionListener(ListenerSpec):
    """Authenticated submission (RFC 6409): STARTTLS and AUTH are required before MAIL."""

    port: Annotated[int, Field(ge=1, le=65535)] = 587
    """Container port the listener binds."""


class ImplicitTlsListener(ListenerSpec):
    """Submission over implicit TLS (RFC 8314), usually port 465."""

    enabled: bool = False
    """Whether the listener is opened."""
    port: Annotated[int, Field(ge=1, le=65535)] = 465
    """Container port the listener binds."""


class InboundListener(ListenerSpec):
    """Port 25 for mail to the return-path domain only: asynchronous bounces and ARF reports."""

    port: Annotated[int, Field(ge=1, le=65535)] = 25
    """Container port the listener binds."""


class Listeners(ApiModel):
    """The SMTP listeners of the MTA."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "self.submission.port != self.inbound.port"
                    " && (!self.implicitTls.enabled || (self.implicitTls.port != self.submission.port"
                    " && self.implicitTls.port != self.inbound.port))",
                    "spec.listeners: submission, inbound and implicitTls must use different ports",
                ),
                cel(
                    "self.submission.enabled || self.implicitTls.enabled",
                    "spec.listeners: enable submission or implicitTls, otherwise no tenant can send",
                ),
            ]
        }
    }

    submission: SubmissionListener = SubmissionListener()
    """Submission with STARTTLS and AUTH (PLAIN, LOGIN)."""
    implicit_tls: ImplicitTlsListener = ImplicitTlsListener()
    """Optional implicit TLS submission."""
    inbound: InboundListener = InboundListener()
    """Inbound listener for bounces and feedback-loop reports to the return-path domain."""
    proxy_protocol: bool = False
    """Expect a PROXY protocol (v1/v2) header from a load balancer on every listener."""
    max_message_size: Annotated[int, Field(ge=1024, le=157286400)] = 26214400
    """Largest message accepted, in bytes (SIZE extension)."""
    max_recipients: Annotated[int, Field(ge=1, le=10000)] = 100
    """Most RCPT TO commands accepted per message."""


class IssuerKind(StrEnum):
    """cert-manager issuer kinds."""

    ISSUER = "Issuer"
    CLUSTER_ISSUER = "ClusterIssuer"


class IssuerReference(ApiModel):
    """A cert-manager issuer that signs the MTA's certificate."""

    name: ObjectName
    """Name of the Issuer or ClusterIssuer."""
    kind: IssuerKind = IssuerKind.ISSUER
    """Issuer (same namespace) or ClusterIssuer."""


class TlsSpec(ApiModel):
    """Where the MTA's TLS certificate comes from: an existing Secret or a cert-manager issuer."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "has(self.secretName) != has(self.issuerRef)",
                    "spec.tls: set exactly one of secretName or issuerRef",
                ),
            ]
        }
    }

    secret_name: ObjectName | None = None
    """A kubernetes.io/tls Secret in the SmtpServer's namespace."""
    issuer_ref: IssuerReference | None = None
    """A cert-manager issuer; the operator requests a Certificate for the hostname."""


class DkimAlgorithm(StrEnum):
    """DKIM signing algorithms (RFC 6376, RFC 8463)."""

    RSA_SHA256 = "rsa-sha256"
    ED25519_SHA256 = "ed25519-sha256"


class DkimKey(ApiModel):
    """A DKIM signing key for one domain and selector."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "self.algorithm != 'ed25519-sha256' || !has(self.rsaKeySize)",
                    "spec.dkim.keys: rsaKeySize applies only to algorithm rsa-sha256",
                ),
            ]
        }
    }

    domain: Fqdn
    """The signing domain (d=); must be one of a tenant's sender domains to align with DMARC."""
    selector: DnsLabel
    """The selector (s=); the public key is published at <selector>._domainkey.<domain>."""
    algorithm: DkimAlgorithm = DkimAlgorithm.RSA_SHA256
    """Signing algorithm."""
    rsa_key_size: Annotated[int, Field(ge=2048, le=4096, multiple_of=1024)] | None = None
    """RSA modulus length in bits (2048 when unset)."""
    secret_name: ObjectName | None = None
    """An existing Secret holding the private key (key `private.pem`); generated when unset."""


class DkimSpec(ApiModel):
    """DKIM signing of outgoing mail."""

    keys: Annotated[
        list[DkimKey],
        Field(max_length=100, json_schema_extra={
            **_map_list("domain", "selector"),
        }),
    ] = []
    """Signing keys; during a rotation list both selectors of a domain."""


class DnsProvider(StrEnum):
    """How DNS records are published."""

    NONE = "none"
    RFC2136 = "rfc2136"
    EXTERNAL_DNS = "external-dns"


class Rfc2136Spec(ApiModel):
    """RFC 2136 dynamic updates signed with TSIG (BIND, Knot, PowerDNS, Windows DNS)."""

    server: Annotated[str, Field(max_length=253, json_schema_extra={"x-kubernetes-validations": [
        cel("isIP(self) || self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$')",
            "spec.dns.rfc2136.server must be an IP address or a host name"),
    ]})]
    """Address or host name of the primary DNS server."""
    port: Annotated[int, Field(ge=1, le=65535)] = 53
    """DNS port of the primary server."""
    zone: Fqdn
    """The zone to update."""
    reverse_zones: Annotated[list[Fqdn], Field(max_length=32, json_schema_extra=_SET)] = []
    """Reverse zones (in-addr.arpa / ip6.arpa) we may write PTR records to."""
    tsig_secret_ref: SecretKeyReference
    """Secret key holding the TSIG key (base64 secret)."""
    tsig_key_name: Annotated[str, Field(max_length=253, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?"
                                                                r"(\.[A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?)*\.?$")]
    """Name of the TSIG key as configured on the server (e.g. tsig-key or update.example.com.)."""
    tsig_algorithm: Annotated[str, Field(pattern=r"^hmac-(sha256|sha384|sha512)$")] = "hmac-sha256"
    """TSIG algorithm."""


class DmarcPolicy(StrEnum):
    """DMARC policies (RFC 7489)."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


class DmarcSpec(ApiModel):
    """The DMARC record published for each sending domain."""

    policy: DmarcPolicy = DmarcPolicy.NONE
    """p= policy; mailbox providers require at least none."""
    aggregate_report_to: Annotated[list[Email], Field(max_length=10, json_schema_extra=_SET)] = []
    """rua= addresses for aggregate reports."""
    percent: Annotated[int, Field(ge=0, le=100)] = 100
    """pct= share of mail the policy applies to."""


class DnsSpec(ApiModel):
    """DNS records the operator publishes for this server: A, PTR, SPF, DKIM, DMARC, MX, MTA-STS."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "self.provider != 'rfc2136' || has(self.rfc2136)",
                    "spec.dns.rfc2136 is required when spec.dns.provider is rfc2136",
                ),
                cel(
                    "self.provider == 'rfc2136' || !has(self.rfc2136)",
                    "spec.dns.rfc2136 is only allowed when spec.dns.provider is rfc2136",
                ),
            ]
        }
    }

    provider: DnsProvider = DnsProvider.NONE
    """none (records are only reported), rfc2136 or external-dns."""
    rfc2136: Rfc2136Spec | None = None
    """Settings for the rfc2136 provider."""
    dmarc: DmarcSpec = DmarcSpec()
    """The DMARC policy to publish."""
    mta_sts: bool = False
    """Publish MTA-STS (RFC 8461) and TLS-RPT records and serve the policy file."""
    ttl: Annotated[int, Field(ge=30, le=86400)] = 300
    """TTL of the published records, in seconds."""


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
    mx_suffixes: Annotated[list[Fqdn], Field(min_length=1, max_length=50, json_schema_extra=_SET)]
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
    domains: Annotated[list[DomainShaping], Field(max_length=500, json_schema_extra=_map_list("domain"))] = []
    """Per recipient domain limits."""
    providers: Annotated[list[ProviderShaping], Field(max_length=100, json_schema_extra=_map_list("name"))] = []
    """Per mailbox provider limits, matched by MX host suffix."""
    sources: Annotated[list[SourceShaping], Field(max_length=1000, json_schema_extra=_map_list("address"))] = []
    """Per sending IP limits."""
    automation: Annotated[list[AutomationRule], Field(max_length=100, json_schema_extra=_map_list("name"))] = []
    """Reply-driven rules (suspend or slow down for a duration)."""


class ResourceList(ApiModel):
    """CPU and memory quantities."""

    cpu: Quantity | None = None
    """CPU, e.g. 500m."""
    memory: Quantity | None = None
    """Memory, e.g. 256Mi."""


class Resources(ApiModel):
    """Compute resources of each MTA container."""

    requests: ResourceList = ResourceList()
    """Guaranteed resources."""
    limits: ResourceList = ResourceList()
    """Maximum resources."""


class SpoolSpec(ApiModel):
    """The durable queue: one PersistentVolumeClaim per replica."""

    size: Quantity = "10Gi"
    """Requested volume size."""
    storage_class_name: ObjectName | None = None
    """StorageClass of the spool volumes; the cluster default when unset."""


class StartTlsPolicy(StrEnum):
    """Outbound STARTTLS policy."""

    OPPORTUNISTIC = "opportunistic"
    REQUIRED = "required"


class ResolverSpec(ApiModel):
    """The DNS resolver the MTA uses for MX lookups."""

    address: Annotated[str, Field(max_length=45, json_schema_extra={"x-kubernetes-validations": [
        cel("isIP(self)", "spec.delivery.resolver.address must be an IP address")]})]
    """Resolver address; the pod's /etc/resolv.conf when resolver is unset."""
    port: Annotated[int, Field(ge=1, le=65535)] = 53
    """Resolver port."""


class DeliverySpec(ApiModel):
    """Outbound delivery."""

    resolver: ResolverSpec | None = None
    """DNS resolver for MX lookups; the cluster DNS when unset."""
    max_queue_age: Duration = "5d"
    """How long a message is retried before it bounces (DSN)."""
    starttls: StartTlsPolicy = StartTlsPolicy.OPPORTUNISTIC
    """Default outbound STARTTLS policy."""
    remote_port: Annotated[int, Field(ge=1, le=65535)] = 25
    """Port of remote MX hosts; only change it for test environments."""


class TenantSelector(ApiModel):
    """Which Tenants may send through this server, by label."""

    match_labels: Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=64)] = {}
    """Tenants carrying all of these labels are served; an empty selector serves every Tenant."""


class SmtpServerSpec(ApiModel):
    """Desired state of an MTA deployment."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "!has(oldSelf.spool) || self.spool == oldSelf.spool",
                    "spec.spool is immutable (the volume claim templates of a StatefulSet cannot change)",
                    field_path=".spool",
                ),
                cel(
                    "!(self.listeners.submission.enabled || self.listeners.implicitTls.enabled) || has(self.tls)",
                    "spec.tls is required when the submission or implicitTls listener is enabled "
                    "(AUTH is only offered over TLS)",
                ),
            ]
        }
    }

    hostname: Fqdn
    """The MTA's host name: greeting banner, certificate name and A record."""
    replicas: Annotated[int, Field(ge=0, le=100)] = 1
    """Number of MTA pods; each sends from its own IP of the pools."""
    ip_pools: Annotated[list[ObjectName], Field(min_length=1, max_length=16, json_schema_extra=_SET)]
    """Names of the IpPools this server sends from, in order of preference."""
    return_path_domain: Fqdn
    """Domain of the envelope sender (bounces and feedback reports come back here, port 25)."""
    listeners: Listeners = Listeners()
    """SMTP listeners."""
    tls: TlsSpec | None = None
    """TLS certificate for STARTTLS and implicit TLS; required when submission is enabled."""
    dkim: DkimSpec = DkimSpec()
    """DKIM signing keys."""
    dns: DnsSpec = DnsSpec()
    """DNS records to publish."""
    throttling: ThrottlingSpec = ThrottlingSpec()
    """Traffic shaping rules."""
    tenant_selector: TenantSelector = TenantSelector()
    """Which Tenants may send through this server."""
    delivery: DeliverySpec = DeliverySpec()
    """Outbound delivery settings."""
    resources: Resources = Resources()
    """Compute resources of each MTA pod."""
    spool: SpoolSpec = SpoolSpec()
    """The durable queue volume (immutable)."""
    image: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[^\s]+$")] | None = None
    """MTA container image; the operator's default when unset."""


class SendingAddress(StatusModel):
    """The address one replica sends from."""

    replica: Annotated[int, Field(ge=0)]
    """StatefulSet ordinal of the replica."""
    pool: ObjectName
    """The IpPool the address belongs to."""
    address: Annotated[str, Field(max_length=45)]
    """The sending IP address."""
    ehlo_name: Annotated[str, Field(max_length=253)]
    """The EHLO name (and PTR target) used from that address."""


class Endpoints(StatusModel):
    """Where clients reach the server."""

    submission: Annotated[str, Field(max_length=512)] | None = None
    """host:port of the submission Service."""
    inbound: Annotated[str, Field(max_length=512)] | None = None
    """host:port of the inbound (port 25) Service."""


class DnsRecordState(StrEnum):
    """What the operator knows about one DNS record set."""

    REQUIRED = "Required"
    """Needed but not managed by the operator (provider none, or outside its zones): publish it by hand."""
    PENDING = "Pending"
    """Handed to external-dns, which has not processed it yet."""
    PUBLISHED = "Published"
    """Written (or accepted by external-dns); not every resolver answers it yet."""
    VERIFIED = "Verified"
    """The authoritative server answers exactly the desired values."""
    CONFLICT = "Conflict"
    """A record set we do not own exists there; it is left untouched."""
    ERROR = "Error"
    """Could not be published or checked; the message says why."""


class DnsRecordStatus(StatusModel):
    """One record set the server needs."""

    name: Annotated[str, Field(max_length=253)]
    """Owner name of the record set (FQDN without trailing dot)."""
    type: Annotated[str, Field(max_length=10)]
    """Record type: A, AAAA, PTR, TXT, MX."""
    state: DnsRecordState
    """Required, Pending, Published, Verified, Conflict or Error."""
    message: Annotated[str, Field(max_length=1024)] | None = None
    """Details: the conflicting record, the error, or how it was checked."""
    values: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=16)] = []
    """The values to publish (presentation format); set for Required records only."""


class DnsStatus(StatusModel):
    """The DNS records of this server and what the operator found in DNS."""

    provider: DnsProvider
    """The provider the records were computed for."""
    records: Annotated[list[DnsRecordStatus], Field(max_length=256, json_schema_extra=_map_list("name", "type"))] = []
    """Per record set, problems first; at most 256 (see omitted)."""
    omitted: Annotated[int, Field(ge=0)] | None = None
    """Record sets left out of `records` to keep the status small."""
    rfc2136: Rfc2136Spec | None = None
    """The RFC 2136 server and zones holding our records; kept after spec.dns changes until they are removed."""


class SmtpServerStatus(CommonStatus):
    """Observed state of an MTA deployment."""

    replicas: Annotated[int, Field(ge=0)] | None = None
    """Pods that exist."""
    ready_replicas: Annotated[int, Field(ge=0)] | None = None
    """Pods that pass their readiness probe."""
    endpoints: Endpoints | None = None
    """Service endpoints."""
    sending_addresses: Annotated[list[SendingAddress], Field(json_schema_extra=_map_list("replica"))] = []
    """The IP each replica sends from."""
    config_hash: Annotated[str, Field(max_length=128)] | None = None
    """Hash of the rendered MTA configuration the pods run."""
    dns: DnsStatus | None = None
    """DNS records (SPF, DKIM, DMARC, PTR, A/AAAA, MX, MTA-STS) and their state; see the DnsReady condition."""


# ============================================================================================
# IpPool
# ============================================================================================


class DnsblSpec(ApiModel):
    """DNS blocklists to check the pool's addresses against."""

    zones: Annotated[list[Fqdn], Field(max_length=50, json_schema_extra=_SET)] = []
    """DNSBL zones, e.g. zen.spamhaus.org."""
    check_interval: Duration = "1h"
    """How often each address is checked."""


class QuarantinePolicy(ApiModel):
    """What happens to an address that is listed."""

    enabled: bool = True
    """Stop sending from a listed address until it is delisted."""
    min_listings: Annotated[int, Field(ge=1, le=50)] = 1
    """Number of zones that must list an address before it is quarantined."""
    release_after: Duration = "24h"
    """How long an address stays quarantined after its last listing disappears."""


class IpPoolSpec(ApiModel):
    """A set of dedicated sending IP addresses."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "!has(self.warmupPlan) || self.warmupPlan != ''",
                    "spec.warmupPlan must name a WarmupPlan",
                ),
            ]
        }
    }

    addresses: Annotated[
        list[Annotated[str, Field(max_length=49)]],
        Field(min_length=1, max_length=256, json_schema_extra={
            **_SET,
            "x-kubernetes-validations": [
                cel(
                    "self.all(a, isIP(a) || (isCIDR(a) && ((cidr(a).ip().family() == 4 && cidr(a).prefixLength() >= 24)"
                    " || (cidr(a).ip().family() == 6 && cidr(a).prefixLength() >= 120))))",
                    "spec.addresses: each entry must be an IP address or a CIDR no larger than /24 (IPv4) "
                    "or /120 (IPv6)",
                ),
            ],
        }),
    ]
    """Sending addresses: single IPs or small CIDRs (every address of the CIDR is used)."""
    ptr_template: Annotated[
        str,
        Field(
            max_length=253,
            pattern=r"^([a-z0-9-]|\{index\}|\{ip\}|\{pool\})+(\.([a-z0-9-]|\{index\}|\{ip\}|\{pool\})+)+$",
        ),
    ] = "mta-{ip}.{pool}.invalid"
    """EHLO / PTR host name per address; {ip} (dashed address), {index} and {pool} are substituted."""
    dnsbl: DnsblSpec = DnsblSpec()
    """Reputation checks."""
    quarantine: QuarantinePolicy = QuarantinePolicy()
    """Handling of listed addresses."""
    warmup_plan: ObjectName | None = None
    """WarmupPlan new addresses follow; addresses without a plan send at full volume."""
    priority: Annotated[int, Field(ge=0, le=1000)] = 100
    """Higher priority pools are preferred when a server uses several."""


class AddressStatus(StatusModel):
    """The observed state of one pool address."""

    address: Annotated[str, Field(max_length=45)]
    """The IP address."""
    ptr_name: Annotated[str, Field(max_length=253)] | None = None
    """The PTR / EHLO name derived from the template."""
    ptr_ok: bool | None = None
    """Whether forward-confirmed reverse DNS matches."""
    assigned_to: Annotated[str, Field(max_length=512)] | None = None
    """namespace/server/replica using this address."""
    listings: Annotated[list[Annotated[str, Field(max_length=253)]], Field(json_schema_extra=_SET)] = []
    """DNSBL zones currently listing the address."""
    warmup_started: datetime | None = None
    """When the address started its warm-up plan (day 1)."""
    warmup_day: Annotated[int, Field(ge=0)] | None = None
    """Day of the warm-up plan the address is on."""
    daily_cap: Annotated[int, Field(ge=0)] | None = None
    """Messages the address may send today."""
    quarantined: bool = False
    """Whether sending from the address is stopped."""


class IpPoolStatus(CommonStatus):
    """Observed state of an IP pool."""

    total: Annotated[int, Field(ge=0)] | None = None
    """Number of addresses in the pool."""
    assigned: Annotated[int, Field(ge=0)] | None = None
    """Addresses assigned to replicas."""
    addresses: Annotated[list[AddressStatus], Field(json_schema_extra=_map_list("address"))] = []
    """Per-address state."""


# ============================================================================================
# WarmupPlan
# ============================================================================================


class ProviderCap(ApiModel):
    """A daily cap for one mailbox provider."""

    provider: MailboxProvider
    """The mailbox provider."""
    daily_cap: Annotated[int, Field(ge=0, le=1_000_000_000)]
    """Most messages per day to that provider."""


class WarmupStage(ApiModel):
    """One stage of an explicit schedule."""

    day: Annotated[int, Field(ge=1, le=3650)]
    """First day (1-based) of the stage; stages must be listed with strictly increasing days."""
    daily_cap: Annotated[int, Field(ge=1, le=1_000_000_000)]
    """Most messages per IP per day; must grow from stage to stage."""
    hourly_cap: Annotated[int, Field(ge=1, le=1_000_000_000)] | None = None
    """Most messages per IP per hour; dailyCap/24 rounded up when unset."""
    provider_caps: Annotated[list[ProviderCap], Field(max_length=6, json_schema_extra=_map_list("provider"))] = []
    """Per mailbox provider caps during the stage; none may exceed dailyCap."""


class GeometricSchedule(ApiModel):
    """A schedule where the daily cap grows by a constant factor each day, up to a ceiling."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "self.initialDailyCap < self.targetDailyCap",
                    "spec.geometric.initialDailyCap must be below spec.geometric.targetDailyCap",
                ),
            ]
        }
    }

    initial_daily_cap: Annotated[int, Field(ge=1, le=1_000_000_000)]
    """Daily cap on day 1."""
    growth_factor: Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?$", max_length=12)]
    """Daily growth factor as a decimal string, e.g. "1.4"; must be greater than 1."""
    target_daily_cap: Annotated[int, Field(ge=1, le=1_000_000_000)]
    """The ceiling: full volume for one IP."""
    max_days: Annotated[int, Field(ge=1, le=365)] = 60
    """The schedule must reach targetDailyCap within this many days."""


class HealthGates(ApiModel):
    """Metrics over the last day that must hold for an address to advance to the next day."""

    max_bounce_rate: Percent = "5"
    """Highest hard-bounce rate in percent."""
    max_complaint_rate: Percent = "0.1"
    """Highest complaint rate in percent (Gmail and Yahoo require below 0.3)."""
    max_deferral_rate: Percent = "20"
    """Highest deferral rate in percent."""
    min_volume: Annotated[int, Field(ge=0, le=1_000_000)] = 100
    """Messages an address must have sent before the gates are evaluated."""


class GateFailureAction(StrEnum):
    """What happens when a gate fails."""

    HOLD = "Hold"
    STEP_BACK = "StepBack"


class WarmupPlanSpec(ApiModel):
    """How a new IP earns volume."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "has(self.stages) != has(self.geometric)",
                    "spec: set exactly one of stages or geometric",
                ),
                cel(
                    "self.onGateFailure != 'StepBack' || self.stepBackDays >= 1",
                    "spec.stepBackDays must be at least 1 when onGateFailure is StepBack",
                ),
            ]
        }
    }

    stages: Annotated[list[WarmupStage], Field(min_length=1, max_length=100)] | None = None
    """An explicit schedule."""
    geometric: GeometricSchedule | None = None
    """A geometric schedule."""
    provider_caps: Annotated[list[ProviderCap], Field(max_length=6, json_schema_extra=_map_list("provider"))] = []
    """Per mailbox provider daily caps for the whole plan; none may exceed the final daily cap."""
    health_gates: HealthGates = HealthGates()
    """Conditions to advance a day."""
    on_gate_failure: GateFailureAction = GateFailureAction.HOLD
    """Hold the current day, or StepBack by stepBackDays."""
    step_back_days: Annotated[int, Field(ge=0, le=30)] = 1
    """Days to step back when a gate fails and onGateFailure is StepBack."""


class WarmupPlanStatus(CommonStatus):
    """Observed state of a warm-up plan."""

    days_to_full_volume: Annotated[int, Field(ge=0)] | None = None
    """Days until an address reaches the final daily cap when every gate passes."""
    final_daily_cap: Annotated[int, Field(ge=0)] | None = None
    """The daily cap at full volume."""
    stage_count: Annotated[int, Field(ge=0)] | None = None
    """Number of distinct daily caps in the schedule."""
    addresses_warming: Annotated[int, Field(ge=0)] | None = None
    """Pool addresses currently following the plan."""


# ============================================================================================
# Tenant
# ============================================================================================


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
        "x-kubernetes-validations": [cel("self == oldSelf", "spec.namespace is immutable once set")]})] | None = None
    """Namespace of the tenant's Campaigns and credentials; tenant-<name> when unset. Immutable."""
    sender_domains: Annotated[list[Fqdn], Field(min_length=1, max_length=100, json_schema_extra=_SET)]
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


# ============================================================================================
# Campaign
# ============================================================================================


class Sender(ApiModel):
    """The From header of the campaign."""

    address: Email
    """Sender address; its domain must be one of the tenant's sender domains."""
    name: Annotated[str, Field(max_length=256)] | None = None
    """Display name."""


class Templates(ApiModel):
    """Message bodies as Jinja2 templates; recipient fields are available as variables."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("has(self.text) || has(self.html)", "spec.templates: set text, html or both"),
            ]
        }
    }

    text: Annotated[str, Field(min_length=1, max_length=1_000_000)] | None = None
    """text/plain body template."""
    html: Annotated[str, Field(min_length=1, max_length=1_000_000)] | None = None
    """text/html body template."""


class ConfigMapKeyReference(ApiModel):
    """A key in a ConfigMap in the campaign's namespace."""

    name: ObjectName
    """Name of the ConfigMap."""
    key: Annotated[str, Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)]
    """Key holding the recipients as CSV with an `email` column."""


class Recipients(ApiModel):
    """Where the recipient list comes from."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "[has(self.inline), has(self.configMapRef), has(self.secretRef)].filter(x, x).size() == 1",
                    "spec.recipients: set exactly one of inline, configMapRef or secretRef",
                ),
            ]
        }
    }

    inline: Annotated[list[Email], Field(min_length=1, max_length=1000, json_schema_extra=_SET)] | None = None
    """A short list of addresses, for tests and small sends."""
    config_map_ref: ConfigMapKeyReference | None = None
    """A CSV in a ConfigMap."""
    secret_ref: SecretKeyReference | None = None
    """A CSV in a Secret (for lists that are personal data)."""


class Unsubscribe(ApiModel):
    """List-Unsubscribe headers (RFC 2369) and one-click unsubscribe (RFC 8058)."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "!self.enabled || has(self.url) || has(self.mailto)",
                    "spec.unsubscribe: set url or mailto when unsubscribe is enabled",
                ),
                cel(
                    "!self.enabled || !self.oneClick || has(self.url)",
                    "spec.unsubscribe.url is required for oneClick (RFC 8058 needs an https URL)",
                ),
            ]
        }
    }

    enabled: bool = True
    """Add List-Unsubscribe headers; bulk senders to Gmail and Yahoo must."""
    url: Annotated[str, Field(pattern=r"^https://[^\s]+$", max_length=2048)] | None = None
    """https URL that unsubscribes the recipient (the MTA adds a per-recipient token)."""
    mailto: Email | None = None
    """Address that receives unsubscribe requests."""
    one_click: bool = True
    """Add List-Unsubscribe-Post: List-Unsubscribe=One-Click (RFC 8058)."""


class RateSpec(ApiModel):
    """Submission rate of the campaign."""

    messages_per_minute: Annotated[int, Field(ge=1, le=1_000_000)] = 600
    """Messages submitted per minute."""


class CampaignSpec(ApiModel):
    """A bulk send."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("self.tenant == oldSelf.tenant", "spec.tenant is immutable", field_path=".tenant"),
                cel(
                    "self.serverRef == oldSelf.serverRef",
                    "spec.serverRef is immutable; create a new Campaign to send through another server",
                    field_path=".serverRef",
                ),
            ]
        }
    }

    tenant: ObjectName
    """The Tenant sending the campaign; must own the campaign's namespace. Immutable."""
    server_ref: NamespacedObjectReference
    """The SmtpServer that sends the campaign. Immutable."""
    sender: Sender
    """The From header."""
    reply_to: Email | None = None
    """Reply-To address."""
    subject: Annotated[str, Field(min_length=1, max_length=998)]
    """Subject template."""
    templates: Templates
    """Body templates."""
    recipients: Recipients
    """The recipient list."""
    start_time: datetime | None = None
    """When to start; immediately when unset."""
    rate: RateSpec = RateSpec()
    """Submission rate."""
    unsubscribe: Unsubscribe
    """Unsubscribe headers; bulk mail must offer an unsubscribe (set enabled: false only for tests)."""
    postal_address: Annotated[str, Field(min_length=5, max_length=512)]
    """The sender's physical postal address, required in bulk mail (CAN-SPAM)."""
    suspend: bool = False
    """Pause submission; resume by setting it back to false."""


class CampaignPhase(StrEnum):
    """Lifecycle phase of a campaign."""

    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    COMPLETED = "Completed"
    FAILED = "Failed"


class CampaignCounters(StatusModel):
    """Message counters of the campaign."""

    queued: Annotated[int, Field(ge=0)] = 0
    """Submitted to the MTA."""
    sent: Annotated[int, Field(ge=0)] = 0
    """Handed to a remote MX."""
    delivered: Annotated[int, Field(ge=0)] = 0
    """Accepted by the remote MX."""
    deferred: Annotated[int, Field(ge=0)] = 0
    """Temporarily refused, being retried."""
    bounced: Annotated[int, Field(ge=0)] = 0
    """Permanently refused."""
    complained: Annotated[int, Field(ge=0)] = 0
    """Reported as spam by the recipient."""
    unsubscribed: Annotated[int, Field(ge=0)] = 0
    """Unsubscribed through the campaign's headers."""
    suppressed: Annotated[int, Field(ge=0)] = 0
    """Not sent because the recipient is on the suppression list."""


class CampaignStatus(CommonStatus):
    """Observed state of a campaign."""

    phase: CampaignPhase | None = None
    """Lifecycle phase."""
    counters: CampaignCounters | None = None
    """Message counters."""
    job_name: Annotated[str, Field(max_length=253)] | None = None
    """The Job that submits the messages."""
    started_at: datetime | None = None
    """When submission started."""
    completed_at: datetime | None = None
    """When the last message was submitted."""


# ============================================================================================
# Kinds
# ============================================================================================


@dataclass(frozen=True)
class PrinterColumn:
    """An additionalPrinterColumns entry."""

    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0

    def wire(self) -> dict[str, Any]:
        """The column as the CRD wants it (jsonPath, not json_path)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


def _ready_columns() -> list[PrinterColumn]:
    return [
        PrinterColumn(name="Ready", type="string", json_path='.status.conditions[?(@.type=="Ready")].status',
                      description="The Ready condition"),
        PrinterColumn(name="Reason", type="string", json_path='.status.conditions[?(@.type=="Ready")].reason',
                      description="Why Ready has its value", priority=1),
    ]


_AGE = PrinterColumn(name="Age", type="date", json_path=".metadata.creationTimestamp")


class Kind:
    """Static description of one custom resource kind: its models and CRD metadata."""

    kind: ClassVar[str]
    plural: ClassVar[str]
    short_names: ClassVar[list[str]]
    scope: ClassVar[ScopeName]
    spec_model: ClassVar[type[ApiModel]]
    status_model: ClassVar[type[CommonStatus]]
    description: ClassVar[str]
    columns: ClassVar[list[PrinterColumn]]
    top_level_validations: ClassVar[list[dict[str, Any]]] = []

    @classmethod
    def singular(cls) -> str:
        """Lower-case kind, the CRD's singular name."""
        return cls.kind.lower()

    @classmethod
    def crd_name(cls) -> str:
        """<plural>.<group>."""
        from .meta import GROUP

        return f"{cls.plural}.{GROUP}"


class SmtpServer(Kind):
    kind = "SmtpServer"
    plural = "smtpservers"
    short_names = ["smtp", "mta"]
    scope = "Namespaced"
    spec_model = SmtpServerSpec
    status_model = SmtpServerStatus
    top_level_validations = [
        cel("self.metadata.name.size() <= 40 && !self.metadata.name.contains('.')",
            "metadata.name must be a DNS label of at most 40 characters (it names the StatefulSet and its pods)"),
    ]
    description = ("An MTA deployment: pods that accept tenants' mail on submission ports and send it from the "
                   "addresses of the referenced IpPools, with DKIM, throttling and DNS records.")
    columns = [
        PrinterColumn(name="Hostname", type="string", json_path=".spec.hostname", description="MTA host name"),
        PrinterColumn(name="Replicas", type="integer", json_path=".spec.replicas", description="Desired pods"),
        PrinterColumn(name="Available", type="integer", json_path=".status.readyReplicas",
                      description="Ready pods"),
        *_ready_columns(),
        PrinterColumn(name="Pools", type="string", json_path=".spec.ipPools", description="IP pools",
                      priority=1),
        _AGE,
    ]


class IpPool(Kind):
    kind = "IpPool"
    plural = "ippools"
    short_names = ["ipp", "pool"]
    scope = "Cluster"
    spec_model = IpPoolSpec
    status_model = IpPoolStatus
    description = "A set of dedicated sending IP addresses with PTR names, reputation checks and warm-up."
    columns = [
        PrinterColumn(name="Addresses", type="integer", json_path=".status.total", description="Addresses"),
        PrinterColumn(name="Assigned", type="integer", json_path=".status.assigned",
                      description="Addresses assigned to replicas"),
        PrinterColumn(name="Warmup", type="string", json_path=".spec.warmupPlan", description="WarmupPlan"),
        *_ready_columns(),
        _AGE,
    ]


class WarmupPlan(Kind):
    kind = "WarmupPlan"
    plural = "warmupplans"
    short_names = ["wup"]
    scope = "Cluster"
    spec_model = WarmupPlanSpec
    status_model = WarmupPlanStatus
    description = ("How a new IP earns volume: an explicit or geometric schedule, per-provider caps, and the "
                   "health gates that allow the next day.")
    columns = [
        PrinterColumn(name="Days", type="integer", json_path=".status.daysToFullVolume",
                      description="Days to full volume"),
        PrinterColumn(name="Final-Cap", type="integer", json_path=".status.finalDailyCap",
                      description="Daily cap at full volume"),
        PrinterColumn(name="On-Failure", type="string", json_path=".spec.onGateFailure", priority=1,
                      description="Hold or StepBack when a gate fails"),
        *_ready_columns(),
        _AGE,
    ]


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
        *_ready_columns(),
        _AGE,
    ]


class Campaign(Kind):
    kind = "Campaign"
    plural = "campaigns"
    short_names = ["cmp"]
    scope = "Namespaced"
    spec_model = CampaignSpec
    status_model = CampaignStatus
    description = "A bulk send by a tenant: templates, recipients, rate and unsubscribe settings."
    columns = [
        PrinterColumn(name="Tenant", type="string", json_path=".spec.tenant", description="Tenant"),
        PrinterColumn(name="Phase", type="string", json_path=".status.phase", description="Lifecycle phase"),
        PrinterColumn(name="Sent", type="integer", json_path=".status.counters.sent", description="Sent"),
        PrinterColumn(name="Bounced", type="integer", json_path=".status.counters.bounced", priority=1,
                      description="Bounced"),
        *_ready_columns(),
        _AGE,
    ]


KINDS: list[type[Kind]] = [SmtpServer, IpPool, WarmupPlan, Tenant, Campaign]
