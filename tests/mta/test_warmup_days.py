"""A warm-up plan over several days on the test clock: real mail through the MTA to smtp-sink, a real ARF
complaint through the inbound listener, and the operator's gate evaluation fed with the MTA's /stats.

Each simulated morning does what the operator does: judge the finished days from the MTA's per-address
figures (`reputation.warmup.advance`) and reload the MTA with the caps of the address's day. The sink
never receives more from the address on a day than that day's cap; what does not fit waits for the next
day; a complaint day holds the address; an idle day does not advance it; nothing bounces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smtpinfra_api.v1alpha1 import WarmupPlanSpec
from smtpinfra_mta.config import parse_config
from smtpinfra_operator.reputation.warmup import Verdict, WarmupState, advance, caps_for_day, figures_by_day

from .conftest import SRC_A1, RunningMta, Sink, submit, wait_for
from .test_feedback import RP, _send_report, arf
from .test_warmup_mta import _bounced, _cap_waits, _stats, env, fake_now  # noqa: F401 - fixtures

pytestmark = [pytest.mark.mta, pytest.mark.dns]

PLAN = WarmupPlanSpec.model_validate({
    "stages": [{"day": 1, "dailyCap": 4}, {"day": 2, "dailyCap": 6}, {"day": 3, "dailyCap": 8}],
    "healthGates": {"minVolume": 2, "minCapUsage": "90", "maxComplaintRate": "10", "maxBounceRate": "10",
                    "maxDeferralRate": "50"},
    "onGateFailure": "Hold",
})


def _delivered(sink: Sink) -> set[str]:
    return {r for m in sink.messages() for r in m.rcpts}


def test_caps_follow_the_plan_a_complaint_day_holds_an_idle_day_does_not_advance(
        env: dict[str, Any], mta_factory: Any, fake_now: Path) -> None:  # noqa: F811 - fixtures
    cfg, sink = env["cfg"], env["sink"]
    cfg["pools"][0]["source_ips"].pop()
    state = WarmupState(since="2026-07-01")

    def morning(date: str) -> int:
        """Judge the finished days and apply today's cap, as the operator does; returns the cap."""
        nonlocal state
        fake_now.write_text(f"{date}T06:00:00Z")
        stats = mta.app.addr_stats
        assert stats is not None
        wait_for(lambda: mta.call(stats.today) == date, timeout=10)  # the MTA's clock has moved on
        figures = figures_by_day(_stats(mta)["addresses"].get(SRC_A1, {}))
        state = advance(PLAN, state, figures, today=date)
        cap = caps_for_day(PLAN, state.day).daily
        assert cap is not None
        cfg["throttling"]["warmup"] = [{"source_ip": SRC_A1, "per_day": cap}]
        mta.call(lambda: mta.app.reload(parse_config(cfg)))
        return cap

    def last_verdict() -> Verdict:
        return state.history[-1].verdict

    def held_at(total: int) -> set[str]:
        """Wait until ``total`` messages reached the sink and the queue is being held by the cap."""
        sink.wait_messages(total, timeout=30)
        waits = _cap_waits(mta)
        wait_for(lambda: _cap_waits(mta) >= waits + 2, timeout=30)
        assert len(sink.messages()) == total
        return _delivered(sink)

    cfg["throttling"]["warmup"] = [{"source_ip": SRC_A1, "per_day": 4}]
    fake_now.write_text("2026-07-01T06:00:00Z")
    mta: RunningMta = mta_factory(cfg)

    # day 1 (cap 4): 5 submitted, 4 leave, 1 waits
    for i in range(5):
        assert submit(mta, to=f"d1-{i}@example.test").has("250 2.0.0 OK queued")
    seen = held_at(4)
    assert len(mta.app.spool.queued_ids()) == 1

    # day 2: day 1 was good and used its cap -> day 2, cap 6; the one left over and 5 new leave (6)
    assert morning("2026-07-02") == 6 and state.day == 2
    for i in range(5):
        assert submit(mta, to=f"d2-{i}@example.test").has("250 2.0.0 OK queued")
    sink.wait_messages(10, timeout=30)
    wait_for(lambda: not mta.app.spool.queued_ids(), timeout=30)
    day2 = _delivered(sink) - seen
    seen |= day2
    assert len(day2) == 6
    angry = next(m for m in sink.messages() if m.rcpts[0] == "d2-0@example.test")
    _send_report(mta, f"fbl@{RP}", arf(angry.mail_from, "d2-0@example.test"))  # 1 of 6: 16.7 % > 10 %
    wait_for(lambda: _stats(mta)["addresses"][SRC_A1]["days"]["2026-07-02"]["other"]["complained"] == 1,
             timeout=30)

    # day 3: the complaint held the address on day 2 (cap 6); nothing is sent (idle)
    assert morning("2026-07-03") == 6 and state.day == 2
    assert last_verdict() == Verdict.HELD
    assert "complaint rate 16.67% over 10%" in state.history[-1].reason

    # day 4: the idle day did not advance it; 7 submitted, 6 leave, 1 waits
    assert morning("2026-07-04") == 6 and state.day == 2
    assert last_verdict() == Verdict.IDLE
    for i in range(7):
        assert submit(mta, to=f"d4-{i}@example.test").has("250 2.0.0 OK queued")
    day4 = held_at(16) - seen
    seen |= day4
    assert len(day4) == 6

    # day 5: a good, full day -> day 3, cap 8; the last one leaves
    assert morning("2026-07-05") == 8 and state.day == 3
    sink.wait_messages(17, timeout=30)
    wait_for(lambda: not mta.app.spool.queued_ids(), timeout=30)
    assert [v.verdict for v in state.history] == [Verdict.ADVANCED, Verdict.HELD, Verdict.IDLE, Verdict.ADVANCED]
    days = _stats(mta)["addresses"][SRC_A1]["days"]
    sent = {d: sum(p["sent"] for p in v.values()) for d, v in days.items()}
    assert sent == {"2026-07-01": 4, "2026-07-02": 6, "2026-07-04": 6, "2026-07-05": 1}
    assert {m.client_addr for m in sink.messages()} == {SRC_A1}
    assert _bounced(mta) == 0
