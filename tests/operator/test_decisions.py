"""The pure decisions of the controllers, table-driven: gathered inputs in, outcome and status out.

SmtpServer: Ready / Reconciling / Stalled from the pods' rollout, the pools' shortfall and tenant
conflicts. IpPool: the assignment, the per-address status and Ready from the pool, its servers and
its warm-up plan as read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from smtpinfra_api.v1alpha1 import IpPoolSpec, SmtpServerSpec
from smtpinfra_operator.builders import workload
from smtpinfra_operator.builders.mtaconfig import ServerInputs, SourceAddress
from smtpinfra_operator.conditions import FALSE, TRUE
from smtpinfra_operator.controllers.ippool import derive
from smtpinfra_operator.controllers.smtpserver import Gathered, decide
from smtpinfra_operator.reputation.warmup import DayFigures

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def server_spec(replicas: int = 2) -> SmtpServerSpec:
    return SmtpServerSpec.model_validate({"hostname": "smtp.example.test", "returnPathDomain": "b.example.test",
                                          "replicas": replicas, "ipPools": ["p"], "dns": {"provider": "none"}})


def gathered(replicas: int = 2, shortfall: list[str] | None = None, conflicts: list[str] | None = None) -> Gathered:
    spec = server_spec(replicas)
    addresses = {i: [SourceAddress(pool="p", address=f"127.0.50.{i + 1}", ehlo_name=f"mta-{i}.example.test")]
                 for i in range(replicas)}
    inputs = ServerInputs(name="s", namespace="mail", spec=spec, tenants=[], replica_addresses=addresses)
    return Gathered(inputs=inputs, credentials={}, tls_secret=None, replicas=replicas,
                    pool_shortfall=shortfall or [], tenant_conflicts=conflicts or [], served=3)


# (case, spec replicas, gathered, rollout, expected: ready, reason, reconciling, stalled, message part)
SERVER_CASES: list[tuple[str, int, Gathered, workload.Rollout, tuple[str, str, bool, bool, str]]] = [
    ("all pods ready and current", 2, gathered(), workload.Rollout(pods=2, ready=2, updated=2, available=2),
     (TRUE, "Available", False, False, "2/2 pods ready, serving 3 tenant(s)")),
    ("pods starting", 2, gathered(), workload.Rollout(pods=2, ready=0, updated=2, available=0),
     (FALSE, "PodsNotReady", True, False, "0/2 pods ready, 2/2 updated")),
    ("ready on the old template", 2, gathered(), workload.Rollout(pods=2, ready=2, updated=1, available=1),
     (FALSE, "PodsNotReady", True, False, "2/2 pods ready, 1/2 updated")),
    ("no pods yet", 2, gathered(), workload.Rollout(),
     (FALSE, "PodsNotReady", True, False, "0/2 pods ready, 0/2 updated")),
    ("pool too small", 2, gathered(1, shortfall=["IpPool p has no free address for replica 1"]),
     workload.Rollout(pods=1, ready=1, updated=1, available=1),
     (FALSE, "PoolTooSmall", False, True, "running 1 of 2 replicas")),
    ("scaled to zero", 0, gathered(0), workload.Rollout(), (TRUE, "ScaledToZero", False, False, "spec.replicas is 0")),
    ("a tenant left out does not make the server unready", 2,
     gathered(conflicts=["Tenant b is not served: sender domain x belongs to Tenant a"]),
     workload.Rollout(pods=2, ready=2, updated=2, available=2), (TRUE, "Available", False, False, "2/2 pods ready")),
]


@pytest.mark.parametrize(("spec_replicas", "inputs", "rollout", "expected"),
                         [c[1:] for c in SERVER_CASES], ids=[c[0] for c in SERVER_CASES])
def test_smtpserver_ready_reconciling_stalled(spec_replicas, inputs, rollout, expected):
    ready, reason, reconciling, stalled, message = expected
    outcome = decide(server_spec(spec_replicas), inputs, rollout, "abc123")
    assert (outcome.ready, outcome.reason, outcome.reconciling, outcome.stalled) == (ready, reason, reconciling,
                                                                                      stalled)
    assert message in outcome.message
    assert outcome.fields["readyReplicas"] == rollout.ready
    assert outcome.fields["replicas"] == rollout.pods
    assert outcome.fields["configHash"] == "abc123"
    assert [a["replica"] for a in outcome.fields["sendingAddresses"]] == sorted(inputs.inputs.replica_addresses)


def test_smtpserver_side_conditions_say_what_is_applied_and_who_is_served():
    conflict = "Tenant b is not served: sender domain x belongs to Tenant a"
    outcome = decide(server_spec(), gathered(conflicts=[conflict]),
                     workload.Rollout(pods=2, ready=2, updated=1, available=1), "abc123")
    extra = {c[0]: c[1:] for c in outcome.extra_conditions}
    assert extra["ConfigApplied"] == (FALSE, "RollingOut", "config abc123 on 1/2 pods")
    assert extra["TenantsServed"] == (FALSE, "SenderDomainConflict", conflict)
    assert outcome.fields["endpoints"] == {"submission": "s-submission.mail.svc:587",
                                           "inbound": "s-inbound.mail.svc:25"}


def server(name: str, replicas: int, pools: list[str], created: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "mail", "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = created
    return {"metadata": meta, "spec": {"hostname": f"{name}.example.test", "returnPathDomain": "b.example.test",
                                       "replicas": replicas, "ipPools": pools}}


PLAN = {"spec": {"geometric": {"initialDailyCap": 100, "growthFactor": "2", "targetDailyCap": 10000, "maxDays": 30}}}
POOL = IpPoolSpec.model_validate({"addresses": ["127.0.60.1", "127.0.60.2", "127.0.60.3"],
                                  "ptrTemplate": "mta-{index}.example.test"})
PLANNED = IpPoolSpec.model_validate({"addresses": ["127.0.60.1"], "ptrTemplate": "mta-{index}.example.test",
                                     "warmupPlan": "slow"})

# (case, spec, previous status, servers, plan body, ptr checks, expected: ready, reason, {address: assignedTo})
POOL_CASES: list[tuple[str, IpPoolSpec, dict[str, Any], list[dict[str, Any]], dict[str, Any] | None,
                       dict[str, bool], tuple[str, str, dict[str, str | None]]]] = [
    ("oldest server first", POOL, {}, [server("b", 1, ["p"], "2026-02-01"), server("a", 1, ["p"], "2026-01-01")],
     None, {}, (TRUE, "AddressesAvailable", {"127.0.60.1": "mail/a/0", "127.0.60.2": "mail/b/0", "127.0.60.3": None})),
    ("recorded assignment kept", POOL, {"addresses": [{"address": "127.0.60.3", "assignedTo": "mail/b/0"}]},
     [server("a", 1, ["p"], "2026-01-01"), server("b", 1, ["p"], "2026-02-01")], None, {},
     (TRUE, "AddressesAvailable", {"127.0.60.1": "mail/a/0", "127.0.60.2": None, "127.0.60.3": "mail/b/0"})),
    ("other pools and deleted servers take nothing", POOL, {},
     [server("a", 2, ["other"], "2026-01-01"), server("b", 1, ["p"], "2026-02-01", deleting=True)], None, {},
     (TRUE, "AddressesAvailable", {"127.0.60.1": None, "127.0.60.2": None, "127.0.60.3": None})),
    ("exhausted", POOL, {}, [server("a", 4, ["p"], "2026-01-01")], None, {},
     (FALSE, "PoolExhausted", {"127.0.60.1": "mail/a/0", "127.0.60.2": "mail/a/1", "127.0.60.3": "mail/a/2"})),
    ("plan missing", PLANNED, {}, [server("a", 1, ["p"], "2026-01-01")], None, {},
     (FALSE, "WarmupPlanNotFound", {"127.0.60.1": "mail/a/0"})),
]


@pytest.mark.parametrize(("spec", "status", "servers", "plan", "ptr", "expected"), [c[1:] for c in POOL_CASES],
                         ids=[c[0] for c in POOL_CASES])
def test_ippool_assignment_and_ready(spec, status, servers, plan, ptr, expected):
    ready, reason, owners = expected
    state, outcome = derive("p", spec, status, servers, plan, ptr, NOW)
    assert (outcome.ready, outcome.reason) == (ready, reason)
    assert {a["address"]: a.get("assignedTo") for a in outcome.fields["addresses"]} == owners
    assert outcome.fields["assigned"] == sum(1 for o in owners.values() if o)
    assert state.addresses == outcome.fields["addresses"]


def test_ippool_address_status_keeps_what_it_knew_and_takes_new_ptr_checks():
    previous = {"addresses": [{"address": "127.0.60.1", "ptrOk": False, "listings": ["zen.example"],
                               "quarantined": True, "assignedTo": "mail/a/0"},
                              {"address": "127.0.60.2", "ptrOk": True}]}
    _, outcome = derive("p", POOL, previous, [server("a", 1, ["p"], "2026-01-01")], None, {"127.0.60.1": True}, NOW)
    by_address = {a["address"]: a for a in outcome.fields["addresses"]}
    assert by_address["127.0.60.1"] == {"address": "127.0.60.1", "ptrName": "mta-0.example.test", "ptrOk": True,
                                        "listings": ["zen.example"], "quarantined": True, "assignedTo": "mail/a/0",
                                        "state": "Quarantined"}
    assert by_address["127.0.60.2"]["ptrOk"] is True  # no new check: the last result stays
    assert "ptrOk" not in by_address["127.0.60.3"]


def test_ippool_warmup_day_does_not_follow_the_calendar():
    # started three days ago, but no figures say it sent: still day 1 with day 1's cap
    previous = {"addresses": [{"address": "127.0.60.1", "assignedTo": "mail/a/0",
                               "warmupStarted": "2026-11-28T12:00:00Z", "warmupDay": 1,
                               "warmupSince": "2026-11-28"}]}
    _, outcome = derive("p", PLANNED, previous, [server("a", 1, ["p"], "2026-01-01")], PLAN, {}, NOW)
    entry = outcome.fields["addresses"][0]
    assert (outcome.ready, entry["warmupStarted"], entry["warmupDay"]) == (TRUE, "2026-11-28T12:00:00Z", 1)
    assert (entry["dailyCap"], entry["state"]) == (100, "Warming")


def test_ippool_warmup_day_advances_on_a_good_well_used_day_from_the_mtas_figures():
    previous = {"addresses": [{"address": "127.0.60.1", "assignedTo": "mail/a/0", "warmupDay": 1,
                               "warmupSince": "2026-11-28"}]}
    figures = {"127.0.60.1": {"2026-11-28": DayFigures(sent=100, delivered=100),  # day 1 -> 2
                              "2026-11-29": DayFigures(),  # idle
                              "2026-11-30": DayFigures(sent=190, delivered=189, complained=1),  # held
                              "2026-12-01": DayFigures(sent=7)}}  # today
    state, outcome = derive("p", PLANNED, previous, [server("a", 1, ["p"], "2026-01-01")], PLAN, {}, NOW, figures)
    entry = outcome.fields["addresses"][0]
    assert (entry["warmupDay"], entry["dailyCap"], entry["sentToday"], entry["state"]) == (2, 200, 7, "Held")
    assert entry["evaluatedThrough"] == "2026-11-30" and entry["warmupSince"] == "2026-11-29"
    assert [v["verdict"] for v in entry["gateHistory"]] == ["Advanced", "Idle", "Held"]
    assert "complaint rate 0.53% over 0.1%" in entry["lastGate"]["reason"]
    assert [(a, v.verdict.value) for a, v in state.verdicts] == [("127.0.60.1", "Advanced"),
                                                                  ("127.0.60.1", "Idle"), ("127.0.60.1", "Held")]
    again, _ = derive("p", PLANNED, outcome.fields, [server("a", 1, ["p"], "2026-01-01")], PLAN, {}, NOW, figures)
    assert again.verdicts == () and again.addresses == outcome.fields["addresses"]  # judged once


def test_ippool_not_ready_when_no_assigned_address_can_send():
    paused = IpPoolSpec.model_validate({"addresses": ["127.0.60.1", "127.0.60.2"], "paused": ["127.0.60.2"],
                                        "ptrTemplate": "mta-{index}.example.test"})
    previous = {"addresses": [{"address": "127.0.60.1", "quarantined": True}]}
    _, outcome = derive("p", paused, previous, [server("a", 2, ["p"], "2026-01-01")], None, {}, NOW)
    assert (outcome.ready, outcome.reason) == (FALSE, "NoAddressCanSend")
    assert [a["state"] for a in outcome.fields["addresses"]] == ["Quarantined", "Paused"]
    _, outcome = derive("p", paused, {}, [server("a", 2, ["p"], "2026-01-01")], None, {}, NOW)
    assert (outcome.ready, outcome.reason) == (TRUE, "AddressesAvailable")


def test_an_unassigned_address_has_not_begun_its_warm_up():
    spec = IpPoolSpec.model_validate({"addresses": ["127.0.60.1", "127.0.60.2"], "warmupPlan": "slow",
                                      "ptrTemplate": "mta-{index}.example.test"})
    _, outcome = derive("p", spec, {}, [server("a", 1, ["p"], "2026-01-01")], PLAN, {}, NOW)
    used, unused = outcome.fields["addresses"]
    assert (used["warmupDay"], used["dailyCap"], used["state"]) == (1, 100, "Warming")
    assert unused["state"] == "Warming" and "warmupDay" not in unused and "warmupStarted" not in unused
