"""Readiness from the pods: the template hash each pod carries, and how `pod_rollout` counts them."""

from __future__ import annotations

from typing import Any

import pytest

from smtpinfra_api.v1alpha1 import SmtpServerSpec
from smtpinfra_operator.builders import workload
from smtpinfra_operator.conditions import FALSE, TRUE, Outcome
from smtpinfra_operator.controllers.smtpserver.decide import (
    PROGRESS_DELAY,
    PodSeen,
    defers_first_status,
    status_refresh_delay,
)

OWNER = workload.Owner(name="out", namespace="mail", uid="u-1")


def spec(**extra: Any) -> SmtpServerSpec:
    return SmtpServerSpec.model_validate({"hostname": "mta.example.test", "ipPools": ["p"],
                                          "returnPathDomain": "bounces.example.test", **extra})


def pod(name: str, template: str | None, ready: bool, terminating: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "mail"}
    if template is not None:
        meta["annotations"] = {workload.TEMPLATE_HASH_ANNOTATION: template}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_template_hash_follows_the_pod_template_and_nothing_else() -> None:
    base = workload.statefulset(OWNER, spec(), 2, "img:1", None)
    same = workload.statefulset(OWNER, spec(), 2, "img:1", None)
    scaled = workload.statefulset(OWNER, spec(), 3, "img:1", None)
    new_image = workload.statefulset(OWNER, spec(), 2, "img:2", None)
    with_tls = workload.statefulset(OWNER, spec(), 2, "img:1", "tls")
    assert workload.template_hash(base) == workload.template_hash(same)
    assert workload.template_hash(base) == workload.template_hash(scaled), "replicas are not in the template"
    assert workload.template_hash(base) != workload.template_hash(new_image)
    assert workload.template_hash(base) != workload.template_hash(with_tls)
    annotations = base["spec"]["template"]["metadata"]["annotations"]
    assert annotations[workload.TEMPLATE_HASH_ANNOTATION] == workload.template_hash(base)


def test_rollout_counts_ready_and_current_pods_of_the_wanted_ordinals() -> None:
    pods = [pod("out-0", "new", ready=True), pod("out-1", "old", ready=True), pod("out-2", "new", ready=False)]
    rollout = workload.pod_rollout("out", pods, 3, "new")
    assert rollout == workload.Rollout(pods=3, ready=2, updated=2, available=1)


def test_rollout_is_done_only_when_every_wanted_pod_is_ready_on_the_current_template() -> None:
    pods = [pod("out-0", "new", ready=True), pod("out-1", "new", ready=True)]
    assert workload.pod_rollout("out", pods, 2, "new").available == 2
    assert workload.pod_rollout("out", pods, 2, "newer").available == 0
    assert workload.pod_rollout("out", pods[:1], 2, "new").available == 1


def test_terminating_and_surplus_pods_do_not_count_towards_the_rollout() -> None:
    pods = [pod("out-0", "new", ready=True, terminating=True), pod("out-1", "new", ready=True),
            pod("out-5", "new", ready=True)]
    rollout = workload.pod_rollout("out", pods, 2, "new")
    assert rollout.pods == 3, "every pod of the server exists"
    assert (rollout.ready, rollout.updated, rollout.available) == (1, 1, 1)


def test_pods_of_other_servers_with_a_common_prefix_are_not_counted() -> None:
    pods = [pod("out-0", "new", ready=True), pod("out-extra-0", "new", ready=True), pod("outbound-0", "new", True)]
    assert workload.pod_rollout("out", pods, 1, "new") == workload.Rollout(pods=1, ready=1, updated=1, available=1)
    assert workload.pod_ordinal("out", "out-12") == 12
    assert workload.pod_ordinal("out", "out-extra-0") is None
    assert workload.pod_ordinal("out", "outbound-0") is None


def test_a_pod_without_the_annotation_is_not_current() -> None:
    rollout = workload.pod_rollout("out", [pod("out-0", None, ready=True)], 1, "new")
    assert (rollout.ready, rollout.updated, rollout.available) == (1, 0, 0)


@pytest.mark.parametrize(("before", "now", "delay"), [
    (None, (False, None, False), PROGRESS_DELAY),  # a pod created: progress, written if Ready is slow
    ((False, None, False), (False, "h1", False), PROGRESS_DELAY),  # its template became known
    ((False, "h1", False), (True, "h1", False), 0.3),  # Ready: at once
    (None, (True, "h1", False), 0.3),  # first seen Ready (e.g. after a restart)
    ((True, "h1", False), (False, "h1", False), 0.3),  # no longer Ready: at once
    ((True, "h1", False), (True, "h1", True), 0.3),  # terminating
    ((False, "h1", False), (False, "h1", True), 0.3),
    ((True, "h1", False), (True, "h1", False), None),  # nothing readiness reads changed
])
def test_a_starting_pods_progress_waits_and_readiness_changes_do_not(
        before: PodSeen | None, now: PodSeen, delay: float | None) -> None:
    assert status_refresh_delay(before, now, 0.3) == delay


STARTING = Outcome(ready=FALSE, reason="PodsNotReady", message="0/1 pods ready, 1/1 updated", reconciling=True)


@pytest.mark.parametrize(("status", "outcome", "defers"), [
    (None, STARTING, True),  # a new server whose pods are starting: its pods' Ready writes the first status
    ({}, STARTING, True),
    (None, Outcome(ready=TRUE, reason="Available", message="1/1 pods ready"), False),
    (None, Outcome(ready=FALSE, reason="PoolTooSmall", message="no address", stalled=True), False),
    (None, Outcome(ready=FALSE, reason="DnsNotReady", message="zone refused", reconciling=True), False),
    ({"conditions": [{"type": "Ready", "status": "True", "reason": "Available"}]}, STARTING, False),  # has one
])
def test_only_a_new_servers_starting_pods_defer_its_first_status(
        status: dict[str, Any] | None, outcome: Outcome, defers: bool) -> None:
    assert defers_first_status(status, outcome) is defers
