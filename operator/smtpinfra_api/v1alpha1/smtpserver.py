"""SmtpServer: an MTA deployment (listeners, TLS, DKIM, delivery, pods) and its status."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from ..meta import (
    ApiModel,
    CommonStatus,
    DnsLabel,
    Duration,
    Fqdn,
    ObjectName,
    Quantity,
    StatusModel,
    cel,
)
from .common import SET_LIST, map_list
from .dns import DnsSpec, DnsStatus
from .kind import AGE_COLUMN, Kind, PrinterColumn, ready_columns
from .throttling import ThrottlingSpec


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


class ListenerLimits(ApiModel):
    """Connection budget of one listener kind; each kind has its own, so port 25 cannot use up 587/465."""

    max_connections: Annotated[int, Field(ge=1, le=100000)] | None = None
    """Concurrent connections to the listener per pod (unset: 1000; inbound 500)."""
    max_connections_per_ip: Annotated[int, Field(ge=1, le=100000)] | None = None
    """Concurrent connections from one client address per pod (unset: 50, as Postfix)."""
    idle_timeout: Duration | None = None
    """How long a session may wait for its next command, e.g. 2m (unset: 5m)."""
    session_time_limit: Duration | None = None
    """Longest session however active: NOOP and the like cannot extend it, at most 1d (unset: 1h; inbound 10m)."""


class SessionLimits(ApiModel):
    """Connection and memory limits of the SMTP listeners (unset fields keep the MTA's defaults)."""

    submission: ListenerLimits = ListenerLimits()
    """Port 587."""
    implicit_tls: ListenerLimits = ListenerLimits()
    """Port 465."""
    inbound: ListenerLimits = ListenerLimits()
    """Port 25."""
    max_data_memory: Annotated[int, Field(ge=1048576, le=68719476736)] | None = None
    """Bytes of message data all sessions of a pod may hold while receiving (unset: 256 MiB); beyond it 452 4.3.1."""


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
            **map_list("domain", "selector"),
        }),
    ] = []
    """Signing keys; during a rotation list both selectors of a domain."""


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
    ip_pools: Annotated[list[ObjectName], Field(min_length=1, max_length=16, json_schema_extra=SET_LIST)]
    """Names of the IpPools this server sends from, in order of preference."""
    return_path_domain: Fqdn
    """Domain of the envelope sender (bounces and feedback reports come back here, port 25)."""
    listeners: Listeners = Listeners()
    """SMTP listeners."""
    limits: SessionLimits = SessionLimits()
    """Connection budgets per listener and client address, session time limits, DATA memory ceiling."""
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


class SmtpServerStatus(CommonStatus):
    """Observed state of an MTA deployment."""

    replicas: Annotated[int, Field(ge=0)] | None = None
    """Pods that exist."""
    ready_replicas: Annotated[int, Field(ge=0)] | None = None
    """Pods that pass their readiness probe."""
    endpoints: Endpoints | None = None
    """Service endpoints."""
    sending_addresses: Annotated[list[SendingAddress], Field(json_schema_extra=map_list("replica"))] = []
    """The IP each replica sends from."""
    config_hash: Annotated[str, Field(max_length=128)] | None = None
    """Hash of the rendered MTA configuration the pods run."""
    dns: DnsStatus | None = None
    """DNS records (SPF, DKIM, DMARC, PTR, A/AAAA, MX, MTA-STS) and their state; see the DnsReady condition."""


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
        *ready_columns(),
        PrinterColumn(name="Pools", type="string", json_path=".spec.ipPools", description="IP pools",
                      priority=1),
        AGE_COLUMN,
    ]
