"""Health-gated warm-up: the warm-up day of an address advances on good, well-used sending days only.

Pure functions of the plan, the address's previous warm-up state and the per-day figures the MTAs
report (/stats "addresses"). A calendar schedule warms an address that never sent; here a day counts
only when the address sent at least the plan's ``minVolume``, used at least ``minCapUsage`` percent of
that day's cap (SparkPost's "over 90 % of the stage" rule) and stayed under every rate gate. An idle
or under-used day changes nothing; a failed gate holds the day or steps back ``stepBackDays``, with
the reason kept in the history the IpPool status carries, so the state survives operator restarts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from smtpinfra_api.v1alpha1 import AddressState, GateFailureAction, MailboxProvider, WarmupPlanSpec

from ..warmup import daily_caps

HISTORY_DAYS = 14
"""Verdicts kept per address (the last two weeks), enough to explain any hold or step-back."""
FIGURES = ("sent", "delivered", "deferred", "bounced", "complained")


class Verdict(StrEnum):
    """What one finished day meant for the address's warm-up."""

    ADVANCED = "Advanced"
    IDLE = "Idle"  # nothing sent: the day does not count
    LOW_VOLUME = "LowVolume"  # under minVolume: too little to judge, does not count
    UNDER_USED = "UnderUsed"  # healthy but under minCapUsage of the cap: does not count
    HELD = "Held"  # a gate failed, onGateFailure Hold
    STEPPED_BACK = "SteppedBack"  # a gate failed, onGateFailure StepBack


@dataclass(frozen=True)
class DayFigures:
    """One address's figures for one day, summed over providers and pods."""

    sent: int = 0
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    complained: int = 0

    def __add__(self, other: DayFigures) -> DayFigures:
        return DayFigures(*(getattr(self, f) + getattr(other, f) for f in FIGURES))


@dataclass(frozen=True)
class DayVerdict:
    """The verdict on one finished day, as kept in the address's status history."""

    date: str
    verdict: Verdict
    day_before: int
    day_after: int
    sent: int
    cap: int
    reason: str

    def wire(self) -> dict[str, Any]:
        return {"date": self.date, "verdict": self.verdict.value, "dayBefore": self.day_before,
                "dayAfter": self.day_after, "sent": self.sent, "cap": self.cap, "reason": self.reason}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> DayVerdict:
        return cls(date=str(data["date"]), verdict=Verdict(data["verdict"]), day_before=int(data["dayBefore"]),
                   day_after=int(data["dayAfter"]), sent=int(data.get("sent", 0)), cap=int(data.get("cap", 0)),
                   reason=str(data.get("reason", "")))


@dataclass(frozen=True)
class WarmupState:
    """An address's warm-up position: its plan day, since when, and the days already judged."""

    day: int = 1
    since: str | None = None
    """The date the address reached its current day (None: not started)."""
    evaluated_through: str | None = None
    """The last finished date that was judged; later dates are judged on the next evaluation."""
    history: tuple[DayVerdict, ...] = field(default_factory=tuple)

    @property
    def last(self) -> DayVerdict | None:
        return self.history[-1] if self.history else None


@dataclass(frozen=True)
class Caps:
    """Today's caps of an address on its plan day (None daily cap: warm, no caps)."""

    daily: int | None
    hourly: int | None
    providers: tuple[tuple[MailboxProvider, int], ...] = ()


def plan_length(plan: WarmupPlanSpec) -> int:
    """Days until full volume: an address past this day is warm."""
    return len(daily_caps(plan))


def caps_for_day(plan: WarmupPlanSpec, day: int) -> Caps:
    """The caps of ``day`` (1-based); an address past the schedule is warm and has none."""
    caps = daily_caps(plan)
    if day > len(caps):
        return Caps(daily=None, hourly=None)
    hourly: int | None = None
    provider: dict[MailboxProvider, int] = {p.provider: p.daily_cap for p in plan.provider_caps}
    if plan.stages is not None:
        stage = [s for s in plan.stages if s.day <= day][-1]
        hourly = stage.hourly_cap
        provider.update({p.provider: p.daily_cap for p in stage.provider_caps})
    return Caps(daily=caps[day - 1], hourly=hourly, providers=tuple(sorted(provider.items())))


def _rate(part: int, whole: int) -> Decimal:
    return Decimal(100) * part / whole if whole else Decimal(0)


def gate_failures(plan: WarmupPlanSpec, figures: DayFigures) -> list[str]:
    """The gates a day with at least ``minVolume`` sent failed, as messages (empty: all passed)."""
    gates = plan.health_gates
    failed = []
    for name, part, limit in (("bounce", figures.bounced, gates.max_bounce_rate),
                              ("complaint", figures.complained, gates.max_complaint_rate),
                              ("deferral", figures.deferred, gates.max_deferral_rate)):
        rate = _rate(part, figures.sent)
        if rate > Decimal(limit):
            failed.append(f"{name} rate {rate:.2f}% over {limit}% ({part} of {figures.sent})")
    return failed


def judge_day(plan: WarmupPlanSpec, day: int, on: str, figures: DayFigures) -> DayVerdict:
    """The verdict on one finished day the address spent on plan day ``day`` (pure)."""
    cap = caps_for_day(plan, day).daily or 0
    gates = plan.health_gates

    def verdict(v: Verdict, after: int, reason: str) -> DayVerdict:
        return DayVerdict(date=on, verdict=v, day_before=day, day_after=after, sent=figures.sent, cap=cap,
                          reason=reason)

    if figures.sent == 0:
        return verdict(Verdict.IDLE, day, "nothing sent")
    if figures.sent < max(gates.min_volume, 1):
        return verdict(Verdict.LOW_VOLUME, day, f"sent {figures.sent}, below minVolume {gates.min_volume}")
    failures = gate_failures(plan, figures)
    if failures:
        reason = "; ".join(failures)
        if plan.on_gate_failure == GateFailureAction.STEP_BACK:
            return verdict(Verdict.STEPPED_BACK, max(1, day - plan.step_back_days), reason)
        return verdict(Verdict.HELD, day, reason)
    needed = Decimal(cap) * Decimal(gates.min_cap_usage) / 100
    if Decimal(figures.sent) < needed:
        return verdict(Verdict.UNDER_USED, day, f"sent {figures.sent} of cap {cap}, below "
                                                f"{gates.min_cap_usage}% of it")
    return verdict(Verdict.ADVANCED, day + 1, f"sent {figures.sent} of cap {cap}, every gate passed")


def advance(plan: WarmupPlanSpec, state: WarmupState, days: Mapping[str, DayFigures], today: str) -> WarmupState:
    """Judge every finished calendar day after ``state.evaluated_through`` (before ``today``), in order (pure).

    A day without figures is an idle day. Judging starts the day after the last judged one (or at
    ``since`` for a new address), so re-running with the same inputs changes nothing. An address
    already past the schedule stays warm.
    """
    if state.evaluated_through is not None:
        first = _next_date(state.evaluated_through)
    else:
        first = state.since if state.since is not None else min(days, default=today)
    if state.since is not None:
        first = max(first, state.since)
    day = first
    while day < today:
        if state.day > plan_length(plan):
            state = replace(state, evaluated_through=day)
        else:
            v = judge_day(plan, state.day, day, days.get(day, DayFigures()))
            history = (*state.history, v)[-HISTORY_DAYS:]
            since = state.since if v.day_after == state.day else _next_date(day)
            state = WarmupState(day=v.day_after, since=since, evaluated_through=day, history=history)
        day = _next_date(day)
    return state


def _next_date(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


def state_of(plan: WarmupPlanSpec | None, state: WarmupState, *, quarantined: bool, paused: bool) -> AddressState:
    """The state an address shows: quarantine and pause win, then the warm-up position."""
    if quarantined:
        return AddressState.QUARANTINED
    if paused:
        return AddressState.PAUSED
    if plan is None or state.day > plan_length(plan):
        return AddressState.WARM
    if state.last is not None and state.last.verdict in (Verdict.HELD, Verdict.STEPPED_BACK):
        return AddressState.HELD
    return AddressState.WARMING


def figures_by_day(stats: Mapping[str, Any]) -> dict[str, DayFigures]:
    """One address's /stats "addresses" entry (or several pods' entries merged) as figures per day."""
    out: dict[str, DayFigures] = {}
    for on, providers in (stats.get("days") or {}).items():
        total = DayFigures()
        for figures in (providers or {}).values():
            total = total + DayFigures(*(int((figures or {}).get(f) or 0) for f in FIGURES))
        out[str(on)] = total
    return out


def merge_reports(reports: list[Mapping[str, Any]], address: str) -> dict[str, DayFigures]:
    """An address's figures per day summed over the pods that reported it (a reassigned address may
    have sent from two pods on one day)."""
    merged: dict[str, DayFigures] = {}
    for report in reports:
        entry = report.get(address)
        if not isinstance(entry, Mapping):
            continue
        for on, figures in figures_by_day(entry).items():
            merged[on] = merged.get(on, DayFigures()) + figures
    return merged


def sent_today(reports: list[Mapping[str, Any]], address: str, today: str) -> int:
    """Messages the address sent today, over the pods."""
    return merge_reports(reports, address).get(today, DayFigures()).sent
