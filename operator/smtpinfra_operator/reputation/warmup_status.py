"""The warm-up part of an IpPool address's status, from its previous status and the MTAs' figures (pure).

The IpPool controller is the only writer of these fields; keeping the warm-up day, since-when, the
last judged day and the recent verdicts in the pool's status is what lets the warm-up survive
operator restarts. Days are judged only when the figures are complete (every pod that could have
sent from the pool answered), so a pod that did not answer delays a verdict instead of making a
busy day look idle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from smtpinfra_api.v1alpha1 import AddressState, GateVerdict, WarmupPlanSpec
from smtpinfra_mta.config import clock_from_env

from .warmup import DayFigures, DayVerdict, Verdict, WarmupState, advance, caps_for_day, merge_reports, state_of


def wall_now() -> datetime:
    """Now, from the same clock the MTAs read: the system clock, or SMTP_INFRA_FAKE_TIME_FILE in tests, so
    the operator judges the days the MTAs counted in."""
    return datetime.fromtimestamp(clock_from_env().now(), UTC)


@dataclass(frozen=True)
class WarmupFields:
    """What the pool writes for one address, and the verdicts reached in this evaluation (for Events)."""

    fields: dict[str, Any]
    """AddressStatus fields (snake_case, as the model takes them)."""
    new_verdicts: tuple[DayVerdict, ...]


def previous_state(before: Mapping[str, Any], today: str) -> WarmupState:
    """The warm-up state kept in the address's last status (a new address starts on day 1 today)."""
    history = tuple(DayVerdict.from_wire(v) for v in before.get("gateHistory") or [])
    return WarmupState(day=int(before.get("warmupDay") or 1), since=before.get("warmupSince") or today,
                       evaluated_through=before.get("evaluatedThrough"), history=history)


def warmup_fields(plan: WarmupPlanSpec | None, before: Mapping[str, Any], figures: Mapping[str, DayFigures] | None,
                  today: str, *, quarantined: bool, paused: bool, started: bool = True) -> WarmupFields:
    """The address's warm-up fields; ``figures`` None means they are not known completely (no verdicts).

    An address that never sent for a replica (``started`` False) has no warm-up position yet: it will
    begin on day 1 when assigned, so it shows Warming (or Quarantined/Paused) and nothing else.
    """
    if plan is None or not started:
        state = state_of(plan, WarmupState(), quarantined=quarantined, paused=paused)
        return WarmupFields({"state": state}, ())
    old = previous_state(before, today)
    new = advance(plan, old, figures, today) if figures is not None else old
    caps = caps_for_day(plan, new.day)
    added = tuple(v for v in new.history if old.evaluated_through is None or v.date > old.evaluated_through)
    fields: dict[str, Any] = {
        "warmup_day": new.day,
        "warmup_since": new.since,
        "evaluated_through": new.evaluated_through,
        "daily_cap": caps.daily,
        "hourly_cap": caps.hourly,
        "state": state_of(plan, new, quarantined=quarantined, paused=paused),
        "gate_history": [GateVerdict.model_validate(v.wire()) for v in new.history] or None,
        "last_gate": GateVerdict.model_validate(new.last.wire()) if new.last is not None else None,
    }
    if figures is not None:
        fields["sent_today"] = figures.get(today, DayFigures()).sent
    elif before.get("sentToday") is not None:
        fields["sent_today"] = before["sentToday"]
    return WarmupFields(fields, added)


def pool_figures(reports: Iterable[Mapping[str, Any] | None],
                 addresses: Iterable[str]) -> dict[str, dict[str, DayFigures]] | None:
    """Each address's figures per day over the pods' /stats "addresses"; None when a pod did not answer."""
    answered: list[Mapping[str, Any]] = []
    for report in reports:
        if report is None:
            return None
        answered.append(report)
    return {a: merge_reports(answered, a) for a in addresses}


def needs_event(verdict: DayVerdict) -> tuple[str, str] | None:
    """(reason, message) of the Event a verdict deserves: holds and step-backs are announced."""
    if verdict.verdict == Verdict.HELD:
        return "WarmupHeld", (f"warm-up held on day {verdict.day_before} after {verdict.date}: {verdict.reason}")
    if verdict.verdict == Verdict.STEPPED_BACK:
        return "WarmupSteppedBack", (f"warm-up stepped back from day {verdict.day_before} to {verdict.day_after} "
                                     f"after {verdict.date}: {verdict.reason}")
    return None


def can_send(entries: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any assigned address of the pool may send (neither quarantined nor paused)."""
    return any(e.get("assignedTo") and e.get("state") not in (AddressState.QUARANTINED, AddressState.PAUSED)
               and not e.get("quarantined") for e in entries)
