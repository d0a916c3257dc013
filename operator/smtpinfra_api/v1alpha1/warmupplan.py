"""WarmupPlan: how a new IP earns volume, explicit or geometric, with health gates."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from ..meta import (
    ApiModel,
    CommonStatus,
    Percent,
    cel,
)
from .common import MailboxProvider, map_list
from .kind import AGE_COLUMN, Kind, PrinterColumn, ready_columns


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
    """Most messages per IP per hour; unset: the day's cap may leave in any hour."""
    provider_caps: Annotated[list[ProviderCap], Field(max_length=6, json_schema_extra=map_list("provider"))] = []
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

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "!has(self.minCapUsage) || double(self.minCapUsage) > 0.0",
                    "spec.healthGates.minCapUsage must be above 0: an address advances only on days it sent "
                    "most of its cap",
                ),
            ]
        }
    }

    max_bounce_rate: Percent = "5"
    """Highest hard-bounce rate in percent."""
    max_complaint_rate: Percent = "0.1"
    """Highest complaint rate in percent (Gmail and Yahoo require below 0.3)."""
    max_deferral_rate: Percent = "20"
    """Highest deferral rate in percent."""
    min_volume: Annotated[int, Field(ge=0, le=1_000_000)] = 100
    """Messages an address must have sent before the gates are evaluated."""
    min_cap_usage: Percent = "90"
    """Percent of the day's cap an address must have sent for the day to count (SparkPost: over 90)."""


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
    provider_caps: Annotated[list[ProviderCap], Field(max_length=6, json_schema_extra=map_list("provider"))] = []
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
        *ready_columns(),
        AGE_COLUMN,
    ]
