"""What a server reads of its IpPool: a pool reconcile kicks a server only when this changes."""

from __future__ import annotations

from datetime import UTC, datetime

from smtpinfra_api.v1alpha1 import IpPoolSpec
from smtpinfra_operator.builders.assignment import Assignment, ReplicaKey
from smtpinfra_operator.conditions import FALSE, Outcome
from smtpinfra_operator.controllers.ippool import PoolState, pool_day_figures, server_view
from smtpinfra_operator.usage import PodReport, ServerSelection, Snapshot

SPEC = IpPoolSpec.model_validate({"addresses": ["127.0.30.1", "127.0.30.2", "127.0.30.3"]})


def state(by_address: dict[str, ReplicaKey], caps: dict[str, int] | None = None,
          problem: Outcome | None = None) -> PoolState:
    entries = [{"address": a, "ptrName": f"mta-{i}.example.test", "ptrOk": True,
                **({"dailyCap": caps[a]} if caps and a in caps else {})}
               for i, a in enumerate(["127.0.30.1", "127.0.30.2", "127.0.30.3"])]
    return PoolState(name="p", spec=SPEC, assignment=Assignment(by_address=by_address, unassigned=[]),
                     addresses=entries, problem=problem)


A = ReplicaKey("mail", "a", 0)
B = ReplicaKey("mail", "b", 0)


def test_another_servers_assignment_does_not_change_this_servers_view() -> None:
    before = state({"127.0.30.1": A})
    after = state({"127.0.30.1": A, "127.0.30.2": B})
    assert server_view(before, "mail", "a", 1) == server_view(after, "mail", "a", 1)
    assert server_view(before, "mail", "b", 1) != server_view(after, "mail", "b", 1)


def test_a_new_cap_or_a_problem_changes_the_view_and_ptr_checks_do_not() -> None:
    base = state({"127.0.30.1": A})
    capped = state({"127.0.30.1": A}, caps={"127.0.30.1": 500})
    assert server_view(base, "mail", "a", 1) != server_view(capped, "mail", "a", 1)
    broken = state({"127.0.30.1": A}, problem=Outcome(ready=FALSE, reason="WarmupPlanNotFound", message="x"))
    assert server_view(broken, "mail", "a", 1).startswith("problem WarmupPlanNotFound")
    unchecked = state({"127.0.30.1": A})
    unchecked.addresses[0]["ptrOk"] = False
    assert server_view(base, "mail", "a", 1) == server_view(unchecked, "mail", "a", 1)


def test_a_replica_without_an_address_is_part_of_the_view() -> None:
    one = state({"127.0.30.1": A})
    assert server_view(one, "mail", "a", 2) != server_view(one, "mail", "a", 1)


def test_quarantine_pause_and_overflow_change_the_view() -> None:
    base = state({"127.0.30.1": A})
    listed = state({"127.0.30.1": A})
    listed.addresses[0]["quarantined"] = True
    assert server_view(base, "mail", "a", 1) != server_view(listed, "mail", "a", 1)
    paused = PoolState(name="p", spec=SPEC.model_copy(update={"paused": ["127.0.30.1"]}),
                       assignment=base.assignment, addresses=base.addresses, problem=None)
    assert server_view(base, "mail", "a", 1) != server_view(paused, "mail", "a", 1)
    other = PoolState(name="p", spec=SPEC.model_copy(update={"paused": ["127.0.30.2"]}),
                      assignment=base.assignment, addresses=base.addresses, problem=None)
    assert server_view(base, "mail", "a", 1) == server_view(other, "mail", "a", 1)  # not this server's address


def test_day_figures_count_only_from_a_snapshot_taken_today() -> None:
    """A day is judged on figures read after it ended: a snapshot from yesterday is not complete for it."""
    servers = (ServerSelection("mail", "a", {}, ("p",)),)
    reports = (PodReport("mail", "a-0", "a", {}, {"127.0.30.1": {"days": {"2026-05-04": {"other": {"sent": 4}}}}}),)
    now = datetime(2026, 5, 5, 0, 0, 5, tzinfo=UTC)
    late = Snapshot(at="", servers=servers, reports=reports, taken=datetime(2026, 5, 4, 23, 59, 58, tzinfo=UTC))
    fresh = Snapshot(at="", servers=servers, reports=reports, taken=datetime(2026, 5, 5, 0, 0, 1, tzinfo=UTC))
    assert pool_day_figures(late, "p", SPEC, now) is None
    figures = pool_day_figures(fresh, "p", SPEC, now)
    assert figures is not None and figures["127.0.30.1"]["2026-05-04"].sent == 4
