"""IpPool: dedicated sending addresses, PTR names, DNSBL checks, quarantine, and per-address status."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from ..meta import (
    ApiModel,
    CommonStatus,
    Duration,
    Fqdn,
    ObjectName,
    StatusModel,
    cel,
)
from .common import SET_LIST, map_list
from .kind import AGE_COLUMN, Kind, PrinterColumn, ready_columns


class DnsblSpec(ApiModel):
    """DNS blocklists to check the pool's addresses against."""

    zones: Annotated[list[Fqdn], Field(max_length=50, json_schema_extra=SET_LIST)] = []
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
    """DNSBL zones currently listing the address."""
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
