"""IpPool: dedicated sending addresses, PTR names, DNSBL checks, quarantine, and per-address status."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from ..meta import (
    ApiModel,
    CommonStatus,
    Duration,
    Fqdn,
    ObjectName,
    SecretKeyReference,
    StatusModel,
    cel,
)
from .common import SET_LIST, map_list
from .kind import AGE_COLUMN, Kind, PrinterColumn, ready_columns

IPV4 = Annotated[str, Field(max_length=15, pattern=r"^([0-9]{1,3}\.){3}[0-9]{1,3}$")]

_RESOLVER_RULE = (
    "isIP(self)"
    " || (self.matches('^[0-9.]+:[0-9]{1,5}$') && isIP(self.substring(0, self.indexOf(':'))))"
    " || (self.matches('^\\\\[[0-9a-fA-F:.]+\\\\]:[0-9]{1,5}$') && isIP(self.substring(1, self.indexOf(']'))))"
)


class DnsblZoneSettings(ApiModel):
    """Per-zone settings: a query key (keyed zones such as Spamhaus DQS) and extra error codes."""

    zone: Fqdn
    """The zone these settings apply to (one of spec.dnsbl.zones)."""
    key_secret_ref: SecretKeyReference | None = None
    """Secret key (in the operator's namespace) holding the zone's query key; queries then go to
    <reversed address>.<key>.<zone>, as Spamhaus DQS expects."""
    error_codes: Annotated[list[IPV4], Field(max_length=32, json_schema_extra=SET_LIST)] = []
    """Answers that mean an error, never a listing, besides the ones known for the zone's operator
    (Spamhaus: 127.255.255.252, .254, .255)."""


class DnsblSpec(ApiModel):
    """DNS blocklists to check the pool's addresses against."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "!has(self.zoneSettings) || self.zoneSettings.all(s, has(self.zones) && s.zone in self.zones)",
                    "spec.dnsbl.zoneSettings: each zone must be listed in spec.dnsbl.zones",
                ),
            ]
        }
    }

    zones: Annotated[list[Fqdn], Field(max_length=50, json_schema_extra=SET_LIST)] = []
    """DNSBL zones, e.g. zen.spamhaus.org."""
    check_interval: Duration = "1h"
    """How often each address is checked."""
    resolver: Annotated[str, Field(max_length=64, json_schema_extra={"x-kubernetes-validations": [
        cel(_RESOLVER_RULE, "spec.dnsbl.resolver must be an IP address, address:port or [IPv6]:port")]})] | None = None
    """The resolver to ask ("address", "address:port" or "[IPv6]:port"); the operator's system resolver
    when unset. Blocklists refuse public resolvers: name one of your own."""
    confirmations: Annotated[int, Field(ge=1, le=10)] = 2
    """Consecutive checks that must find a listing before it counts (a flapping answer moves nothing)."""
    query_timeout: Duration = "3s"
    """How long one query may take before its answer counts as unknown."""
    zone_settings: Annotated[list[DnsblZoneSettings], Field(max_length=50, json_schema_extra=map_list("zone"))] = []
    """Per-zone query keys and error codes."""


class QueuedMail(StrEnum):
    """What happens to mail queued for an address that may not send (quarantined or paused)."""

    MOVE = "Move"
    WAIT = "Wait"


class QuarantinePolicy(ApiModel):
    """What happens to an address that is listed."""

    enabled: bool = True
    """Stop sending from a listed address until it is delisted."""
    min_listings: Annotated[int, Field(ge=1, le=50)] = 1
    """Number of zones that must list an address before it is quarantined."""
    release_after: Duration = "24h"
    """How long an address stays quarantined after its last listing disappears."""
    zones: Annotated[list[Fqdn], Field(max_length=50, json_schema_extra=SET_LIST)] = []
    """Zones whose listings quarantine an address; every zone of spec.dnsbl when empty."""
    queued_mail: QueuedMail = QueuedMail.MOVE
    """Mail queued on the replica of a quarantined (or paused) address: Move it to the replicas whose
    address of this pool may send (the MTA pods hand it over), or Wait there until the release. Never
    bounced."""


class Overflow(StrEnum):
    """Where traffic goes that is over the warm-up caps of the pool's warming addresses."""

    WAIT = "Wait"
    WARM_ADDRESSES = "WarmAddresses"


class AddressState(StrEnum):
    """What an address of the pool may do now."""

    WARMING = "Warming"
    WARM = "Warm"
    HELD = "Held"
    QUARANTINED = "Quarantined"
    PAUSED = "Paused"


class IpPoolSpec(ApiModel):
    """A set of dedicated sending IP addresses."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "!has(self.warmupPlan) || self.warmupPlan != ''",
                    "spec.warmupPlan must name a WarmupPlan",
                ),
                cel(
                    "!has(self.quarantine) || !has(self.quarantine.zones) || self.quarantine.zones.all(z, "
                    "has(self.dnsbl) && has(self.dnsbl.zones) && z in self.dnsbl.zones)",
                    "spec.quarantine.zones: each zone must be listed in spec.dnsbl.zones",
                ),
            ]
        }
    }

    addresses: Annotated[
        list[Annotated[str, Field(max_length=49)]],
        Field(min_length=1, max_length=256, json_schema_extra={
            **SET_LIST,
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
    overflow: Overflow = Overflow.WAIT
    """Traffic over the caps of warming addresses: Wait for the next hour/day, or go out from the pool's
    warm addresses (WarmAddresses). Never bounced."""
    paused: Annotated[list[Annotated[str, Field(max_length=45)]],
                      Field(max_length=256, json_schema_extra=SET_LIST)] = []
    """Addresses that send nothing until removed from this list (their traffic uses the pool's others)."""


class GateVerdict(StatusModel):
    """The warm-up verdict on one finished day of an address."""

    date: Annotated[str, Field(max_length=10)]
    """The day judged (YYYY-MM-DD, in the MTAs' time zone)."""
    verdict: Annotated[str, Field(max_length=16)]
    """Advanced, Idle, LowVolume, UnderUsed, Held or SteppedBack."""
    day_before: Annotated[int, Field(ge=0)]
    """Warm-up day the address was on."""
    day_after: Annotated[int, Field(ge=0)]
    """Warm-up day after the verdict."""
    sent: Annotated[int, Field(ge=0)] = 0
    """Messages sent that day."""
    cap: Annotated[int, Field(ge=0)] = 0
    """The day's cap."""
    reason: Annotated[str, Field(max_length=512)] = ""
    """Why, e.g. the gate that failed with its rate."""


class BlocklistStatus(StatusModel):
    """One address in one DNSBL zone."""

    zone: Annotated[str, Field(max_length=253)]
    """The DNSBL zone."""
    state: Literal["Unknown", "Clean", "Pending", "Listed", "Releasing"]
    """Decided state: Pending until confirmed, Releasing until the listing has been gone for releaseAfter."""
    since: datetime | None = None
    """When the address entered this state."""
    code: Annotated[str, Field(max_length=45)] | None = None
    """The zone's return code of the listing (or of the last error)."""
    result: Literal["Listed", "NotListed", "Error", "Unknown", "Unusable"] | None = None
    """What the last answer meant; Error and Unknown answers and Unusable zones move no state."""
    message: Annotated[str, Field(max_length=1024)] | None = None
    """Details of an error or unknown answer."""


class BlocklistZoneStatus(StatusModel):
    """One DNSBL zone's health as the pool's checks see it (RFC 5782 §5 self-test)."""

    zone: Annotated[str, Field(max_length=253)]
    """The DNSBL zone."""
    usable: bool | None = None
    """False when the zone fails its self-test (its answers are then ignored); unset when it could not be tested."""
    reason: Annotated[str, Field(max_length=128)] | None = None
    """SelfTestPassed, SelfTestFailed, SelfTestError, SelfTestNoAnswer or QueryKeyMissing."""
    message: Annotated[str, Field(max_length=1024)] | None = None
    """What the self-test found."""
    last_test: datetime | None = None
    """When the zone was last self-tested."""


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
    listings: Annotated[list[Annotated[str, Field(max_length=253)]], Field(json_schema_extra=SET_LIST)] = []
    """DNSBL zones whose listing of the address is confirmed and not yet released."""
    blocklists: Annotated[list[BlocklistStatus], Field(json_schema_extra=map_list("zone"))] | None = None
    """The address in each zone: decided state, since when, the returned code, the last answer."""
    last_check: datetime | None = None
    """When the address was last looked up in the blocklists."""
    warmup_started: datetime | None = None
    """When the address started its warm-up plan (day 1)."""
    warmup_day: Annotated[int, Field(ge=0)] | None = None
    """Day of the warm-up plan the address is on."""
    daily_cap: Annotated[int, Field(ge=0)] | None = None
    """Messages the address may send today."""
    quarantined: bool = False
    """Whether sending from the address is stopped."""
    state: AddressState | None = None
    """Warming, Warm, Held (a gate failed), Quarantined or Paused."""
    warmup_since: Annotated[str, Field(max_length=10)] | None = None
    """The date the address reached its current warm-up day."""
    evaluated_through: Annotated[str, Field(max_length=10)] | None = None
    """The last finished day whose figures were judged."""
    hourly_cap: Annotated[int, Field(ge=0)] | None = None
    """Messages the address may send per hour today."""
    sent_today: Annotated[int, Field(ge=0)] | None = None
    """Messages sent today, as the MTAs reported."""
    last_gate: GateVerdict | None = None
    """The verdict on the last judged day."""
    gate_history: Annotated[list[GateVerdict], Field(max_length=14)] | None = None
    """Verdicts of the last days judged, oldest first."""


class IpPoolStatus(CommonStatus):
    """Observed state of an IP pool."""

    total: Annotated[int, Field(ge=0)] | None = None
    """Number of addresses in the pool."""
    assigned: Annotated[int, Field(ge=0)] | None = None
    """Addresses assigned to replicas."""
    addresses: Annotated[list[AddressStatus], Field(json_schema_extra=map_list("address"))] = []
    """Per-address state."""
    blocklist_zones: Annotated[list[BlocklistZoneStatus], Field(json_schema_extra=map_list("zone"))] = []
    """Health of each DNSBL zone."""


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
        *ready_columns(),
        AGE_COLUMN,
    ]
