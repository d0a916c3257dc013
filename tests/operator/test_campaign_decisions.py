"""Campaign phase and counters, and tenant suspension: the pure decisions, table-driven."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from smtpinfra_api.v1alpha1 import SuspensionThresholds
from smtpinfra_operator.campaigns.progress import (
    PROGRESS_ANNOTATION,
    Facts,
    JobState,
    Progress,
    counters,
    decide,
    job_state,
    parse_progress,
    percent,
    sum_outcomes,
)
from smtpinfra_operator.campaigns.suspension import (
    LIFT_ANNOTATION,
    Window,
    assess,
    suspended_reason,
    suspension_decision,
    window_figures,
)

pytestmark = pytest.mark.operator

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RUNNING = JobState(exists=True)


def outcomes(**values: int) -> dict[str, int]:
    base = dict.fromkeys(("accepted", "delivered", "deferred", "bounced", "failed", "complained", "suppressed",
                          "unsubscribed"), 0)
    return base | values


# (name, facts, phase, Ready, reason, start_job, pause_job)
PHASES: list[tuple[str, Facts, str, str, str, bool, bool]] = [
    ("new campaign: start the sender", Facts(now=NOW), "Pending", "Unknown", "Starting", True, False),
    ("start time ahead", Facts(now=NOW, start_time=NOW + timedelta(hours=1)), "Scheduled", "False", "Scheduled",
     False, False),
    ("start time passed", Facts(now=NOW, start_time=NOW - timedelta(minutes=1)), "Pending", "Unknown", "Starting",
     True, False),
    ("template error: nothing sent", Facts(now=NOW, template_error="text template, line 1: unexpected '}'"),
     "Failed", "False", "TemplateError", False, True),
    ("sending", Facts(now=NOW, job=RUNNING, progress=Progress(total=10, submitted=4),
                      outcomes=outcomes(accepted=4, delivered=2)), "Sending", "False", "Sending", True, False),
    ("suspended by spec", Facts(now=NOW, suspend=True, job=RUNNING, progress=Progress(total=10, submitted=4)),
     "Paused", "False", "Suspended", True, True),
    ("tenant suspended", Facts(now=NOW, tenant_suspended="complaint rate 1.00%", job=RUNNING),
     "Paused", "False", "TenantSuspended", True, True),
    ("sender done but mail deferred: still Sending",
     Facts(now=NOW, job=JobState(exists=True, succeeded=True), progress=Progress(total=3, submitted=3, done=True),
           outcomes=outcomes(accepted=3, delivered=2, deferred=1)), "Sending", "False", "WaitingForOutcomes", True,
     False),
    ("sender done, one handed over but no outcome yet: still Sending",
     Facts(now=NOW, job=RUNNING, progress=Progress(total=3, submitted=3, done=True),
           outcomes=outcomes(accepted=3, delivered=2)), "Sending", "False", "WaitingForOutcomes", True, False),
    ("every recipient final: Completed",
     Facts(now=NOW, job=JobState(exists=True, succeeded=True),
           progress=Progress(total=6, submitted=4, invalid=1, suppressed=1, done=True),
           outcomes=outcomes(accepted=4, delivered=2, bounced=1, failed=1)), "Completed", "True", "Completed",
     True, False),
    ("every recipient final while suspended: Completed, nothing left to pause",
     Facts(now=NOW, suspend=True, job=RUNNING, progress=Progress(total=1, submitted=1, done=True),
           outcomes=outcomes(delivered=1)), "Completed", "True", "Completed", True, False),
    ("all final but the sender not done: Sending",
     Facts(now=NOW, job=RUNNING, progress=Progress(total=2, submitted=2), outcomes=outcomes(delivered=2)),
     "Sending", "False", "Sending", True, False),
    ("Completed stays Completed (late complaints only move counters)",
     Facts(now=NOW, job=JobState(exists=True, succeeded=True), previous_phase="Completed",
           progress=Progress(total=1, submitted=1, done=True), outcomes=outcomes(delivered=1, complained=1)),
     "Completed", "True", "Completed", False, False),
    ("job failed after its retries", Facts(now=NOW, job=JobState(exists=True, failed=True, message="BackoffLimit")),
     "Failed", "False", "JobFailed", True, False),
    ("sender reported bad input", Facts(now=NOW, job=RUNNING, progress=Progress(total=5, error="no email column")),
     "Failed", "False", "SenderError", True, True),
    ("missing server before anything ran", Facts(now=NOW, problem=("ServerNotFound", "SmtpServer x/y not found")),
     "Pending", "False", "ServerNotFound", False, True),
]


@pytest.mark.parametrize(("name", "facts", "phase", "ready", "reason", "start", "pause"), PHASES,
                         ids=[p[0] for p in PHASES])
def test_phase(name: str, facts: Facts, phase: str, ready: str, reason: str, start: bool, pause: bool) -> None:
    verdict = decide(facts)
    assert (verdict.phase, verdict.ready, verdict.reason) == (phase, ready, reason), verdict.message
    assert (verdict.start_job, verdict.pause_job) == (start, pause)
    assert verdict.stalled == (phase == "Failed" or facts.problem is not None)


def test_counters_join_sender_and_mta_figures() -> None:
    c = counters(Progress(total=10, submitted=6, invalid=1, suppressed=2, failed=1),
                 outcomes(accepted=6, delivered=3, deferred=1, bounced=1, complained=1, suppressed=1,
                          unsubscribed=1))
    assert c == {"total": 10, "sent": 6, "delivered": 3, "deferred": 1, "bounced": 1, "complained": 1,
                 "unsubscribed": 1, "suppressed": 3, "invalid": 1, "failed": 1}
    assert percent(c) == "90%"  # 3 delivered + 1 bounced + 1 failed + 3 suppressed + 1 invalid; 1 deferred
    assert percent(counters(None, None)) == "0%"


def test_progress_annotation_is_read_and_bad_ones_are_ignored() -> None:
    value = {"total": 5, "submitted": 3, "invalid": 1, "suppressed": 0, "failed": 0, "done": False, "error": None,
             "invalidRows": [{"row": 4, "reason": "bad address"}]}
    lease = {"metadata": {"annotations": {PROGRESS_ANNOTATION: json.dumps(value)}}}
    assert parse_progress(lease) == Progress(total=5, submitted=3, invalid=1, invalid_rows=((4, "bad address"),))
    assert parse_progress({"metadata": {"annotations": {PROGRESS_ANNOTATION: "{not json"}}}) is None
    assert parse_progress({"metadata": {}}) is None
    assert parse_progress(None) is None
    odd = {"metadata": {"annotations": {PROGRESS_ANNOTATION: json.dumps({"total": -3, "submitted": "7",
                                                                         "done": "yes"})}}}
    assert parse_progress(odd) == Progress()  # negative, string and non-bool values count as nothing


def test_outcomes_sum_over_pods_of_one_campaign_only() -> None:
    pods: list[dict[str, Any] | None] = [
        {"ns/a": {"tenant": "t", "accepted": 3, "delivered": 2, "deferred": 1}, "ns/b": {"delivered": 50}},
        None,  # a pod that did not answer
        {"ns/a": {"tenant": "t", "accepted": 1, "delivered": 1, "bounced": True}},
    ]
    summed = sum_outcomes(pods, "ns/a")
    assert summed is not None
    assert (summed["accepted"], summed["delivered"], summed["deferred"], summed["bounced"]) == (4, 3, 1, 0)
    assert sum_outcomes(pods, "ns/c") is None


def test_job_state_reads_conditions() -> None:
    assert job_state(None) == JobState()
    assert job_state({"spec": {"suspend": True}, "status": {}}) == JobState(exists=True, suspended=True)
    done = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert job_state(done).succeeded
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                         "message": "exit code 2"}]}}
    assert job_state(failed).failed and "PodFailurePolicy" in job_state(failed).message


THRESHOLDS = SuspensionThresholds(max_complaint_rate="0.3", max_bounce_rate="10", window="24h", min_volume=500)

# (name, window, suspended, reason)
SUSPENSIONS: list[tuple[str, Window | None, bool, str]] = [
    ("13 sends, 1 bounce: under the floor", Window(sent=13, bounced=1, complained=0), False, "BelowMinVolume"),
    ("13 sends, 13 complaints: under the floor", Window(sent=13, bounced=0, complained=13), False, "BelowMinVolume"),
    ("no figures", None, False, "NoFigures"),
    ("healthy volume", Window(sent=10_000, bounced=100, complained=10), False, "WithinThresholds"),
    ("complaints over 0.3 %", Window(sent=1000, bounced=0, complained=4), True, "ComplaintRateExceeded"),
    ("complaints exactly 0.3 %", Window(sent=1000, bounced=0, complained=3), False, "WithinThresholds"),
    ("bounces over 10 %", Window(sent=500, bounced=51, complained=0), True, "BounceRateExceeded"),
    ("bounces exactly 10 %", Window(sent=500, bounced=50, complained=0), False, "WithinThresholds"),
]


@pytest.mark.parametrize(("name", "window", "suspended", "reason"), SUSPENSIONS, ids=[s[0] for s in SUSPENSIONS])
def test_suspension_decision(name: str, window: Window | None, suspended: bool, reason: str) -> None:
    decision = suspension_decision(THRESHOLDS, window, NOW)
    assert (decision.suspended, decision.reason) == (suspended, reason), decision.message


def test_suspension_names_the_figures() -> None:
    decision = suspension_decision(THRESHOLDS, Window(sent=1000, bounced=20, complained=4), NOW)
    assert decision.complaint_rate == "0.40" and decision.bounce_rate == "2.00"
    assert "4 complaints and 20 bounces in 1000 sends over the last 24h" in decision.message
    assert LIFT_ANNOTATION in decision.message


def test_suspension_sticks_until_lifted_and_a_lift_gives_one_window() -> None:
    since = NOW - timedelta(hours=2)
    healthy = Window(sent=10_000, bounced=0, complained=0)
    kept = suspension_decision(THRESHOLDS, healthy, NOW, suspended_since=since, previous_message="rates")
    assert kept.suspended and kept.message == "rates"  # good figures do not lift it: a human does
    stale_lift = suspension_decision(THRESHOLDS, healthy, NOW, suspended_since=since,
                                     lifted_at=since - timedelta(minutes=1))
    assert stale_lift.suspended  # a lift older than the suspension does not count
    bad = Window(sent=1000, bounced=0, complained=50)
    lifted = suspension_decision(THRESHOLDS, bad, NOW, suspended_since=since, lifted_at=NOW - timedelta(hours=1))
    assert not lifted.suspended and lifted.reason == "Lifted"
    later = suspension_decision(THRESHOLDS, bad, NOW + timedelta(hours=24), lifted_at=NOW - timedelta(hours=1))
    assert later.suspended and later.reason == "ComplaintRateExceeded"


def test_window_figures_are_summed_over_pods() -> None:
    pods: list[dict[str, Any] | None] = [
        {"hour": "h", "day": "d", "accepted": {"acme": {"hour": 1, "day": 1}}, "acme": {"window": {"sent": 400,
                                                                                                  "bounced": 2}}},
        {"accepted": {"acme": {"window": {"sent": 200, "complained": 3}}}},
        None,
    ]
    assert window_figures(pods, "acme") == Window(sent=600, bounced=2, complained=3)
    assert window_figures(pods, "other") is None


def test_assess_reads_the_condition_and_the_lift_annotation() -> None:
    body: dict[str, Any] = {"metadata": {"name": "acme", "annotations": {}}, "status": {"conditions": []}}
    pods = [{"acme": {"window": {"sent": 1000, "bounced": 0, "complained": 10}}}]
    decision, condition = assess(body, THRESHOLDS, pods, NOW)
    assert decision.suspended and condition[:3] == ("Suspended", "True", "ComplaintRateExceeded")
    body["status"]["conditions"] = [{"type": "Suspended", "status": "True", "reason": condition[2],
                                     "message": condition[3], "lastTransitionTime": "2026-12-01T11:00:00Z"}]
    assert suspended_reason(body) == condition[3]
    body["metadata"]["annotations"][LIFT_ANNOTATION] = "2026-12-01T11:30:00Z"
    decision, condition = assess(body, THRESHOLDS, pods, NOW)
    assert not decision.suspended and condition[1] == "False"


def test_campaign_outcomes_come_from_the_delivery_process_when_the_pod_splits_them() -> None:
    """The pods run accepting and delivering as two processes; /stats of the delivering one has `campaigns`."""
    import asyncio

    from smtpinfra_operator.builders.mtaconfig import DELIVERY_HTTP_PORT, HTTP_PORT
    from smtpinfra_operator.usage import read_pod_stats

    answers: dict[int, dict[str, Any]] = {
        HTTP_PORT: {"tenants": {"hour": "h"}, "campaigns": {}},
        DELIVERY_HTTP_PORT: {"addresses": {}, "campaigns": {"ns/a": {"delivered": 2}}}}
    asked: list[tuple[int, str | None]] = []

    async def fetch(ip: str, port: int, token: str | None) -> dict[str, Any]:  # stands in for the pod's two ports
        asked.append((port, token))
        if port not in answers:
            raise OSError("connection refused")
        return answers[port]

    tenants, _, campaigns = asyncio.run(read_pod_stats(fetch, "127.0.0.1", "t"))
    assert tenants == {"hour": "h"} and campaigns == {"ns/a": {"delivered": 2}}
    assert asked == [(HTTP_PORT, "t"), (DELIVERY_HTTP_PORT, "t")]
    answers[HTTP_PORT] = {"tenants": {}, "addresses": {}, "campaigns": {"ns/a": {"delivered": 1}}}  # one process
    assert asyncio.run(read_pod_stats(fetch, "127.0.0.1", "t"))[2] == {"ns/a": {"delivered": 1}}
    answers[HTTP_PORT] = {"tenants": {}}
    del answers[DELIVERY_HTTP_PORT]
    assert asyncio.run(read_pod_stats(fetch, "127.0.0.1", "t"))[2] is None  # not read, never "no outcomes"
