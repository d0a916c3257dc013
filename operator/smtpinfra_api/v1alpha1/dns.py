"""The DNS part of an SmtpServer: which provider publishes its records, and their observed state.

Separate from smtpserver.py because the DNS records code and its tests use these types alone."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from ..meta import (
    ApiModel,
    Email,
    Fqdn,
    SecretKeyReference,
    StatusModel,
    cel,
)
from .common import SET_LIST, map_list


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
    reverse_zones: Annotated[list[Fqdn], Field(max_length=32, json_schema_extra=SET_LIST)] = []
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
    aggregate_report_to: Annotated[list[Email], Field(max_length=10, json_schema_extra=SET_LIST)] = []
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
    records: Annotated[list[DnsRecordStatus], Field(max_length=256, json_schema_extra=map_list("name", "type"))] = []
    """Per record set, problems first; at most 256 (see omitted)."""
    omitted: Annotated[int, Field(ge=0)] | None = None
    """Record sets left out of `records` to keep the status small."""
    rfc2136: Rfc2136Spec | None = None
    """The RFC 2136 server and zones holding our records; kept after spec.dns changes until they are removed."""
