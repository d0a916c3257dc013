"""Warm-up plans: the checks the schema cannot express, and the schedule they describe.

Pure functions of the WarmupPlan spec. The API server already enforces types, ranges, the
choice between an explicit and a geometric schedule, and per-field syntax; what is left needs
arithmetic over whole lists: stages that grow, caps that fit inside each other, a geometric
rule that reaches its ceiling in time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from smtpinfra_api.v1alpha1 import WarmupPlanSpec

from .conditions import FALSE, TRUE, Outcome


@dataclass(frozen=True)
class Problem:
    """One reason the plan cannot be used, with the message the user sees."""

    reason: str
    message: str


@dataclass(frozen=True)
class Summary:
    """What a valid plan means for an address that passes every gate."""

    days_to_full_volume: int
    final_daily_cap: int
    stage_count: int


def daily_caps(spec: WarmupPlanSpec) -> list[int]:
    """The daily cap of each day from day 1 until full volume (last entry is the final cap)."""
    if spec.stages is not None:
        caps: list[int] = []
        stages = spec.stages
        for index, stage in enumerate(stages):
            end = stages[index + 1].day if index + 1 < len(stages) else stage.day + 1
            caps.extend([stage.daily_cap] * max(end - stage.day, 0))
        return caps
    assert spec.geometric is not None
    geo = spec.geometric
    factor = Decimal(geo.growth_factor)
    caps = []
    cap = Decimal(geo.initial_daily_cap)
    # Bounded by maxDays so a factor of 1.0000001 cannot loop for ever.
    for _ in range(geo.max_days):
        value = min(geo.target_daily_cap, math.ceil(cap))
        caps.append(value)
        if value >= geo.target_daily_cap:
            break
        cap *= factor
    return caps


def check(spec: WarmupPlanSpec) -> list[Problem]:
    """Every problem the plan has; empty when it is usable."""
    problems: list[Problem] = []
    final_cap: int | None = None
    if spec.stages is not None:
        stages = spec.stages
        if stages[0].day != 1:
            problems.append(Problem("FirstStageNotDayOne",
                                    f"spec.stages[0].day is {stages[0].day}; the first stage must start on day 1"))
        for i in range(1, len(stages)):
            prev, cur = stages[i - 1], stages[i]
            if cur.day <= prev.day:
                problems.append(Problem(
                    "StagesNotIncreasing",
                    f"spec.stages[{i}].day ({cur.day}) must be greater than spec.stages[{i - 1}].day ({prev.day})",
                ))
            if cur.daily_cap <= prev.daily_cap:
                problems.append(Problem(
                    "CapsNotIncreasing",
                    f"spec.stages[{i}].dailyCap ({cur.daily_cap}) must be greater than "
                    f"spec.stages[{i - 1}].dailyCap ({prev.daily_cap})",
                ))
        for i, stage in enumerate(stages):
            if stage.hourly_cap is not None and stage.hourly_cap > stage.daily_cap:
                problems.append(Problem(
                    "HourlyCapAboveDailyCap",
                    f"spec.stages[{i}].hourlyCap ({stage.hourly_cap}) exceeds its dailyCap ({stage.daily_cap})",
                ))
            for cap in stage.provider_caps:
                if cap.daily_cap > stage.daily_cap:
                    problems.append(Problem(
                        "ProviderCapAboveTotal",
                        f"spec.stages[{i}].providerCaps[{cap.provider.value}].dailyCap ({cap.daily_cap}) "
                        f"exceeds the stage's dailyCap ({stage.daily_cap})",
                    ))
        final_cap = max(s.daily_cap for s in stages)
    elif spec.geometric is not None:
        geo = spec.geometric
        factor = Decimal(geo.growth_factor)
        final_cap = geo.target_daily_cap
        if factor <= 1:
            problems.append(Problem(
                "GrowthFactorTooSmall",
                f"spec.geometric.growthFactor ({geo.growth_factor}) must be greater than 1 for the cap to grow",
            ))
        else:
            caps = daily_caps(spec)
            if caps[-1] < geo.target_daily_cap:
                needed = (Decimal(geo.target_daily_cap) / Decimal(geo.initial_daily_cap)) ** (
                    Decimal(1) / Decimal(max(geo.max_days - 1, 1)))
                problems.append(Problem(
                    "CeilingNotReached",
                    f"spec.geometric reaches only {caps[-1]}/day after maxDays={geo.max_days} days, below "
                    f"targetDailyCap {geo.target_daily_cap}; raise growthFactor to at least "
                    f"{math.ceil(needed * 1000) / 1000} or raise maxDays",
                ))
    if final_cap is not None:
        for cap in spec.provider_caps:
            if cap.daily_cap > final_cap:
                problems.append(Problem(
                    "ProviderCapAboveTotal",
                    f"spec.providerCaps[{cap.provider.value}].dailyCap ({cap.daily_cap}) exceeds the final "
                    f"daily cap of the schedule ({final_cap})",
                ))
    return problems


def summarize(spec: WarmupPlanSpec) -> Summary:
    """Days to full volume and the final cap of a plan that passed `check`."""
    caps = daily_caps(spec)
    stage_count = len(spec.stages) if spec.stages is not None else len(caps)
    return Summary(days_to_full_volume=len(caps), final_daily_cap=caps[-1], stage_count=stage_count)


def outcome(spec: WarmupPlanSpec) -> Outcome:
    """The status outcome of a WarmupPlan: Ready with a summary, or not ready naming the problem."""
    problems = check(spec)
    if problems:
        first = problems[0]
        message = "; ".join(p.message for p in problems)
        return Outcome(ready=FALSE, reason=first.reason, message=message, stalled=True)
    summary = summarize(spec)
    return Outcome(
        ready=TRUE,
        reason="PlanValid",
        message=(f"Full volume of {summary.final_daily_cap} messages/day per address "
                 f"after {summary.days_to_full_volume} days"),
        fields={
            "daysToFullVolume": summary.days_to_full_volume,
            "finalDailyCap": summary.final_daily_cap,
            "stageCount": summary.stage_count,
        },
    )
