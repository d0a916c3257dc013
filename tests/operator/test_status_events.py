"""Which changes of Ready get an Event: the pure rule `statuswriter._routine`, as a table.

Statuses are built with `conditions.build_status` from outcomes, as the operator writes them.
"""

from __future__ import annotations

from typing import Any

import pytest

from smtpinfra_operator.conditions import FALSE, READY, TRUE, Outcome, build_status, get_condition
from smtpinfra_operator.statuswriter import _routine

CONVERGING = Outcome(ready=FALSE, reason="PodsNotReady", message="0/1 pods ready", reconciling=True)
STALLED = Outcome(ready=FALSE, reason="PoolTooSmall", message="no address", stalled=True)
READY_NOW = Outcome(ready=TRUE, reason="Available", message="1/1 pods ready")
BROKEN = Outcome(ready=FALSE, reason="ApplyFailed", message="API refused", reconciling=True)


def status_after(*outcomes: Outcome) -> dict[str, Any]:
    """The status after these outcomes were published, a minute apart."""
    status: dict[str, Any] = {}
    for minute, outcome in enumerate(outcomes):
        status = build_status(status, outcome, 1, f"2026-01-01T00:{minute:02d}:00Z")
    return status


@pytest.mark.parametrize(("history", "outcome", "routine"), [
    ((), CONVERGING, True),  # a new object starts converging
    ((), READY_NOW, True),  # Ready from its first status (its pods were quicker than its first write)
    ((), STALLED, False),  # stuck from the start
    ((CONVERGING,), READY_NOW, True),  # the end of a convergence the status showed
    ((STALLED,), READY_NOW, False),  # a recovery from a stall
    ((READY_NOW,), CONVERGING, False),  # a Ready object that stops being Ready (e.g. a pod lost)
    ((READY_NOW,), STALLED, False),
    ((CONVERGING, CONVERGING), READY_NOW, True),  # however long the first convergence took
    ((CONVERGING, READY_NOW, BROKEN), READY_NOW, False),  # a recovery after the Warning it had
    ((STALLED, CONVERGING), READY_NOW, False),  # it was stuck before: its recovery is news
])
def test_only_the_normal_course_of_converging_goes_without_an_event(history: tuple[Outcome, ...], outcome: Outcome,
                                                                     routine: bool) -> None:
    current = status_after(*history)
    before = get_condition(current, READY)
    assert _routine(current, before, outcome) is routine
