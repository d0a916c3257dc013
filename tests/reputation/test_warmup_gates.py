"""Health-gated warm-up, pure: which finished days advance an address, hold it or step it back."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpinfra_api.v1alpha1 import AddressState, WarmupPlanSpec
from smtpinfra_operator.reputation.warmup import (
    DayFigures,
    Verdict,
    WarmupState,
    advance,
    caps_for_day,
    figures_by_day,
    judge_day,
    merge_reports,
    state_of,
)


def plan(**overrides: Any) -> WarmupPlanSpec:
    spec: dict[str, Any] = {
        "stages": [{"day": 1, "dailyCap": 200}, {"day": 2, "dailyCap": 500, "hourlyCap": 100},
                   {"day": 3, "dailyCap": 1000, "providerCaps": [{"provider": "gmail", "dailyCap": 300}]}],
        "healthGates": {"maxBounceRate": "5", "maxComplaintRate": "0.1", "maxDeferralRate": "20",
                        "minVolume": 100, "minCapUsage": "90"},
    }
    spec.update(overrides)
    return WarmupPlanSpec.model_validate(spec)


HOLD = plan()
STEP = plan(onGateFailure="StepBack", stepBackDays=1)


@pytest.mark.parametrize(("spec", "day", "figures", "verdict", "after", "reason"), [
    (HOLD, 1, DayFigures(), Verdict.IDLE, 1, "nothing sent"),
    (HOLD, 1, DayFigures(sent=99, delivered=99), Verdict.LOW_VOLUME, 1, "below minVolume 100"),
    (HOLD, 2, DayFigures(sent=449, delivered=449), Verdict.UNDER_USED, 2, "sent 449 of cap 500"),
    (HOLD, 2, DayFigures(sent=450, delivered=450), Verdict.ADVANCED, 3, "every gate passed"),
    (HOLD, 1, DayFigures(sent=200, delivered=189, bounced=11), Verdict.HELD, 1, "bounce rate 5.50% over 5%"),
    (HOLD, 1, DayFigures(sent=200, delivered=200, complained=1), Verdict.HELD, 1, "complaint rate 0.50% over 0.1%"),
    (HOLD, 1, DayFigures(sent=200, delivered=150, deferred=50), Verdict.HELD, 1, "deferral rate 25.00% over 20%"),
    (STEP, 3, DayFigures(sent=1000, delivered=1000, complained=2), Verdict.STEPPED_BACK, 2, "complaint rate"),
    (STEP, 1, DayFigures(sent=200, delivered=200, complained=2), Verdict.STEPPED_BACK, 1, "complaint rate"),
    # a failed gate counts even when the cap was not used: bad mail is bad at any volume over minVolume
    (HOLD, 3, DayFigures(sent=100, delivered=90, bounced=10), Verdict.HELD, 3, "bounce rate 10.00%"),
])
def test_judge_day(spec: WarmupPlanSpec, day: int, figures: DayFigures, verdict: Verdict, after: int,
                   reason: str) -> None:
    v = judge_day(spec, day, "2026-06-01", figures)
    assert (v.verdict, v.day_after) == (verdict, after)
    assert reason in v.reason


def test_step_back_by_several_days_stops_at_day_one() -> None:
    spec = plan(onGateFailure="StepBack", stepBackDays=5)
    v = judge_day(spec, 3, "2026-06-01", DayFigures(sent=1000, complained=10))
    assert v.day_after == 1


def test_min_cap_usage_is_configurable() -> None:
    lenient = plan(healthGates={"minVolume": 10, "minCapUsage": "50"})
    assert judge_day(lenient, 2, "d", DayFigures(sent=250)).verdict == Verdict.ADVANCED
    assert judge_day(lenient, 2, "d", DayFigures(sent=249)).verdict == Verdict.UNDER_USED


def test_caps_follow_the_stage_and_end_with_the_schedule() -> None:
    assert caps_for_day(HOLD, 2).daily == 500 and caps_for_day(HOLD, 2).hourly == 100
    day3 = caps_for_day(HOLD, 3)
    assert day3.daily == 1000 and [(p.value, c) for p, c in day3.providers] == [("gmail", 300)]
    assert caps_for_day(HOLD, 4).daily is None  # past the schedule: warm


def test_advance_judges_each_finished_day_once_in_order() -> None:
    days = {
        "2026-06-01": DayFigures(sent=200, delivered=200),  # day 1 -> 2
        "2026-06-02": DayFigures(),  # idle: stays on 2
        # 2026-06-03 has no figures at all: idle as well
        "2026-06-04": DayFigures(sent=500, delivered=499, complained=1),  # complaint 0.2 %: held on 2
        "2026-06-05": DayFigures(sent=480, delivered=480),  # 96 % of 500: 2 -> 3
        "2026-06-06": DayFigures(sent=10),  # today: not finished, not judged
    }
    state = advance(HOLD, WarmupState(since="2026-06-01"), days, today="2026-06-06")
    assert state.day == 3 and state.since == "2026-06-06" and state.evaluated_through == "2026-06-05"
    assert [(v.date, v.verdict) for v in state.history] == [
        ("2026-06-01", Verdict.ADVANCED), ("2026-06-02", Verdict.IDLE), ("2026-06-03", Verdict.IDLE),
        ("2026-06-04", Verdict.HELD), ("2026-06-05", Verdict.ADVANCED)]
    assert advance(HOLD, state, days, today="2026-06-06") == state  # idempotent
    assert state_of(HOLD, state, quarantined=False, paused=False) == AddressState.WARMING
    held = advance(HOLD, WarmupState(since="2026-06-04", day=2), days, today="2026-06-05")
    assert state_of(HOLD, held, quarantined=False, paused=False) == AddressState.HELD
    assert state_of(HOLD, held, quarantined=True, paused=True) == AddressState.QUARANTINED
    assert state_of(HOLD, held, quarantined=False, paused=True) == AddressState.PAUSED


def test_days_before_the_address_started_are_not_judged() -> None:
    days = {"2026-05-30": DayFigures(sent=200, delivered=200)}
    assert advance(HOLD, WarmupState(since="2026-06-01"), days, today="2026-06-03").day == 1


def test_an_address_past_the_schedule_is_warm() -> None:
    state = WarmupState(day=4, since="2026-06-01")
    after = advance(HOLD, state, {"2026-06-01": DayFigures(sent=5, complained=5)}, today="2026-06-02")
    assert after.day == 4 and not after.history
    assert state_of(HOLD, after, quarantined=False, paused=False) == AddressState.WARM


def test_figures_from_several_pods_are_summed() -> None:
    pod_a = {"192.0.2.1": {"days": {"2026-06-01": {"gmail": {"sent": 3, "bounced": 1}, "other": {"sent": 2}}}}}
    pod_b = {"192.0.2.1": {"days": {"2026-06-01": {"gmail": {"sent": 5, "complained": 1}}}}, "192.0.2.2": {}}
    merged = merge_reports([pod_a, pod_b, {}], "192.0.2.1")
    assert merged == {"2026-06-01": DayFigures(sent=10, bounced=1, complained=1)}
    assert figures_by_day({}) == {}


figures_strategy = st.builds(
    DayFigures,
    sent=st.integers(0, 1200),
    delivered=st.integers(0, 1200),
    deferred=st.integers(0, 300),
    bounced=st.integers(0, 60),
    complained=st.integers(0, 3),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), figures_strategy), min_size=1, max_size=20),
       st.sampled_from([HOLD, STEP, plan(onGateFailure="StepBack", stepBackDays=2)]))
def test_no_sequence_of_days_advances_without_a_passing_well_used_day(
        sequence: list[DayFigures | None], spec: WarmupPlanSpec) -> None:
    dates = [f"2026-07-{i + 1:02d}" for i in range(len(sequence))]
    days = {d: f for d, f in zip(dates, sequence, strict=True) if f is not None}
    state = WarmupState(since=dates[0])
    for i, today in enumerate([*dates[1:], "2026-08-01"]):
        before = state
        state = advance(spec, state, days, today=today)
        figures = days.get(dates[i], DayFigures())
        cap = caps_for_day(spec, before.day).daily
        gates = spec.health_gates
        passed = (cap is not None and figures.sent >= gates.min_volume and figures.sent > 0
                  and 100 * figures.sent >= 90 * cap
                  and 100 * figures.bounced <= 5 * figures.sent
                  and 1000 * figures.complained <= figures.sent
                  and 100 * figures.deferred <= 20 * figures.sent)
        if state.day > before.day:
            assert passed, (before, figures)
            assert state.day == before.day + 1  # never more than one day per day
        if passed:
            assert state.day == before.day + 1
        assert state.day >= 1
