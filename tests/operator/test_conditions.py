"""The status machinery shared by every kind (pure functions)."""

from __future__ import annotations

import pytest

from smtpinfra_kube import Packed
from smtpinfra_operator.conditions import (
    FALSE,
    TRUE,
    UNKNOWN,
    Outcome,
    build_status,
    get_condition,
    pending,
    status_patch,
)

pytestmark = pytest.mark.operator

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"


def test_first_sight_is_unknown_and_reconciling():
    status = build_status(None, pending(), 1, T0)
    ready = get_condition(status, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (UNKNOWN, "Pending", 1)
    assert get_condition(status, "Reconciling")["status"] == TRUE
    assert get_condition(status, "Stalled")["status"] == FALSE
    assert status["observedGeneration"] == 1


def test_transition_time_is_kept_while_status_does_not_flip():
    ok = Outcome(ready=TRUE, reason="PlanValid", message="a")
    s1 = build_status(None, ok, 1, T0)
    s2 = build_status(s1, Outcome(ready=TRUE, reason="PlanValid", message="b"), 2, T1)
    assert get_condition(s2, "Ready")["lastTransitionTime"] == T0
    assert get_condition(s2, "Ready")["message"] == "b"
    assert get_condition(s2, "Ready")["observedGeneration"] == 2
    s3 = build_status(s2, Outcome(ready=FALSE, reason="Broken", stalled=True), 3, T2)
    assert get_condition(s3, "Ready")["lastTransitionTime"] == T2
    assert get_condition(s3, "Stalled") == {
        "type": "Stalled", "status": TRUE, "reason": "Broken", "message": "",
        "lastTransitionTime": T2, "observedGeneration": 3,
    }


def test_same_outcome_later_produces_no_patch():
    """Re-deriving an unchanged outcome must not write (no hot loop, no timestamp churn)."""
    outcome = Outcome(ready=TRUE, reason="PlanValid", fields={"finalDailyCap": 10})
    current = build_status(None, outcome, 4, T0)
    current["kopf"] = {"progress": {}}
    assert status_patch(current, build_status(current, outcome, 4, T2)) == {}


def test_patch_nulls_fields_that_disappeared_and_leaves_kopf_alone():
    current = build_status(None, Outcome(ready=TRUE, reason="Ok", fields={"finalDailyCap": 10}), 1, T0)
    current["kopf"] = {"progress": {"x": 1}}
    desired = build_status(current, Outcome(ready=FALSE, reason="Bad", stalled=True), 2, T1)
    patch = status_patch(current, desired)
    assert patch["finalDailyCap"] is None
    assert "kopf" not in patch
    assert patch["observedGeneration"] == 2


def test_patch_nulls_nested_fields_that_disappeared():
    """A JSON merge patch merges objects: a key gone from a nested status object must be nulled explicitly."""
    dns = {"provider": "rfc2136", "records": [], "rfc2136": {"server": "192.0.2.53", "zone": "example.test"}}
    current = build_status(None, Outcome(ready=TRUE, reason="Ok", fields={"dns": dns}), 1, T0)
    desired = build_status(current, Outcome(ready=TRUE, reason="Ok", fields={"dns": {"provider": "none",
                                                                                     "records": []}}), 1, T0)
    assert status_patch(current, desired) == {"dns": {"provider": "none", "rfc2136": None}}
    assert status_patch(desired, desired) == {}


def test_a_packed_field_of_a_cached_status_is_diffed_as_its_content():
    """An informer holds an SmtpServer's status.dns compressed; the patch is still the nested diff."""
    dns = {"provider": "rfc2136", "records": [], "rfc2136": {"server": "192.0.2.53", "zone": "example.test"}}
    current = build_status(None, Outcome(ready=TRUE, reason="Ok", fields={"dns": dns}), 1, T0)
    cached = {**current, "dns": Packed(dns)}
    assert status_patch(cached, current) == {}
    desired = build_status(current, Outcome(ready=TRUE, reason="Ok", fields={"dns": {"provider": "none",
                                                                                     "records": []}}), 1, T0)
    assert status_patch(cached, desired) == {"dns": {"provider": "none", "rfc2136": None}}


def test_conditions_keep_their_order_and_extra_conditions_are_added():
    s1 = build_status(None, Outcome(ready=TRUE, reason="Ok"), 1, T0)
    s2 = build_status(s1, Outcome(ready=TRUE, reason="Ok", extra_conditions=(("ConfigApplied", TRUE, "Applied", ""),)),
                      1, T1)
    assert [c["type"] for c in s2["conditions"]] == ["Ready", "Reconciling", "Stalled", "ConfigApplied"]
