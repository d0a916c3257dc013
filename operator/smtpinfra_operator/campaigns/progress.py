"""A campaign's counters and phase from what the sender and the MTAs report (pure).

- The sender writes its progress only as the `smtpinfra.com/progress` annotation of its Lease
  (total, submitted, invalid, suppressed, failed, done, error, invalidRows).
- The MTAs report per-campaign outcomes in `/stats` → `campaigns["<namespace>/<name>"]`
  (accepted, delivered, deferred, bounced, failed, complained, suppressed), summed over the pods.

Honest completion: `Completed` only when the sender is done AND every recipient has a final
outcome — nothing deferred, and delivered + bounced + failed + suppressed + invalid reaches the
total. Mail handed to the MTA but not delivered yet keeps the campaign `Sending`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

PROGRESS_ANNOTATION = "smtpinfra.com/progress"
MTA_FIELDS = ("accepted", "delivered", "deferred", "bounced", "failed", "complained", "suppressed", "unsubscribed")


@dataclass(frozen=True)
class Progress:
    """The sender's progress as its Lease carries it."""

    total: int = 0
    submitted: int = 0
    invalid: int = 0
    suppressed: int = 0
    failed: int = 0
    done: bool = False
    error: str | None = None
    invalid_rows: tuple[tuple[int, str], ...] = ()


def parse_progress(lease: Mapping[str, Any] | None) -> Progress | None:
    """The Lease's progress annotation; None without a Lease or annotation, or when it is not valid JSON."""
    raw = (((lease or {}).get("metadata") or {}).get("annotations") or {}).get(PROGRESS_ANNOTATION)
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None

    def count(key: str) -> int:
        value = data.get(key)
        return max(int(value), 0) if isinstance(value, int | float) and not isinstance(value, bool) else 0

    rows = tuple((int(r.get("row") or 0), str(r.get("reason") or "")[:512])
                 for r in (data.get("invalidRows") or [])[:20] if isinstance(r, dict))
    error = data.get("error")
    return Progress(total=count("total"), submitted=count("submitted"), invalid=count("invalid"),
                    suppressed=count("suppressed"), failed=count("failed"), done=data.get("done") is True,
                    error=str(error) if error else None, invalid_rows=rows)


def sum_outcomes(campaign_stats: Iterable[Mapping[str, Any] | None], key: str) -> dict[str, int] | None:
    """One campaign's outcomes summed over the pods' `/stats` `campaigns` objects; None: no pod reported it."""
    total = dict.fromkeys(MTA_FIELDS, 0)
    found = False
    for campaigns in campaign_stats:
        entry = (campaigns or {}).get(key) if isinstance(campaigns, Mapping) else None
        if not isinstance(entry, Mapping):
            continue
        found = True
        for name in MTA_FIELDS:
            value = entry.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                total[name] += max(value, 0)
    return total if found else None


def counters(progress: Progress | None, outcomes: Mapping[str, int] | None) -> dict[str, int]:
    """`status.counters` (camelCase keys) from the sender's progress and the MTAs' outcomes."""
    p = progress or Progress()
    o = dict.fromkeys(MTA_FIELDS, 0) | dict(outcomes or {})
    return {
        "total": p.total, "sent": max(p.submitted, o["accepted"]), "delivered": o["delivered"],
        "deferred": o["deferred"], "bounced": o["bounced"], "complained": o["complained"],
        "unsubscribed": o["unsubscribed"], "suppressed": p.suppressed + o["suppressed"], "invalid": p.invalid,
        "failed": p.failed + o["failed"],
    }


def final(c: Mapping[str, int]) -> int:
    """Recipients with a final outcome."""
    return c["delivered"] + c["bounced"] + c["failed"] + c["suppressed"] + c["invalid"]


def complete(progress: Progress | None, c: Mapping[str, int]) -> bool:
    """The sender is done and every recipient has a final outcome (nothing deferred)."""
    return progress is not None and progress.done and c["deferred"] == 0 and final(c) >= c["total"]


def percent(c: Mapping[str, int]) -> str:
    """Recipients with a final outcome in percent of the total, rounded down ("100%" only when all have one)."""
    if c["total"] <= 0:
        return "0%"
    return f"{min(final(c) * 100 // c['total'], 100)}%"


@dataclass(frozen=True)
class JobState:
    """The sender Job as read: absent, running, or finished either way."""

    exists: bool = False
    succeeded: bool = False
    failed: bool = False
    message: str = ""
    suspended: bool = False


def job_state(job: Mapping[str, Any] | None) -> JobState:
    if job is None:
        return JobState()
    state = JobState(exists=True, suspended=bool((job.get("spec") or {}).get("suspend")))
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return JobState(exists=True, succeeded=True)
        if condition.get("type") == "Failed":
            return JobState(exists=True, failed=True, suspended=state.suspended,
                            message=f"{condition.get('reason') or 'Failed'}: {condition.get('message') or ''}".strip())
    return state


@dataclass(frozen=True)
class Facts:
    """Everything the phase decision reads, gathered by the controller."""

    now: datetime
    start_time: datetime | None = None
    suspend: bool = False
    tenant_suspended: str = ""
    """Why the tenant is suspended (empty: it is not)."""
    template_error: str | None = None
    problem: tuple[str, str] | None = None
    """(reason, message) of something the user must fix before anything is sent (e.g. no such server)."""
    job: JobState = field(default_factory=JobState)
    progress: Progress | None = None
    outcomes: Mapping[str, int] | None = None
    previous_phase: str | None = None


@dataclass(frozen=True)
class Verdict:
    """The campaign's phase, its Ready condition's parts, and what to do with the Job."""

    phase: str
    ready: str
    reason: str
    message: str
    counters: dict[str, int]
    reconciling: bool = False
    stalled: bool = False
    start_job: bool = False
    """Create (or keep) the sender Job."""
    pause_job: bool = False
    """Keep the Job suspended (no pod runs)."""
    paused_reason: str | None = None


def decide(f: Facts) -> Verdict:
    """The phase, in order of precedence: Completed (sticky), Failed, Scheduled, Completed, Paused, Sending, Pending.

    A campaign whose every recipient has a final outcome is Completed even while suspended: nothing is left to pause.
    """
    c = counters(f.progress, f.outcomes)
    done_msg = f"{final(c)} of {c['total']} recipients have a final outcome"
    if f.previous_phase == "Completed":
        return Verdict("Completed", "True", "Completed", done_msg, c)
    if f.problem is not None:
        return Verdict("Failed" if f.job.exists else "Pending", "False", f.problem[0], f.problem[1], c, stalled=True,
                       pause_job=True)
    if f.template_error is not None:
        return Verdict("Failed", "False", "TemplateError", f"nothing is sent: {f.template_error}", c, stalled=True,
                       pause_job=True)
    if f.progress is not None and f.progress.error:
        return Verdict("Failed", "False", "SenderError", f.progress.error, c, stalled=True, start_job=f.job.exists,
                       pause_job=True)
    if f.job.failed:
        return Verdict("Failed", "False", "JobFailed", f.job.message or "the sender Job failed", c, stalled=True,
                       start_job=True)
    if f.start_time is not None and f.now < f.start_time and not f.job.exists:
        return Verdict("Scheduled", "False", "Scheduled", f"starts at {f.start_time.isoformat()}", c,
                       reconciling=True)
    if complete(f.progress, c):
        return Verdict("Completed", "True", "Completed", done_msg, c, start_job=True)
    if f.tenant_suspended:
        return Verdict("Paused", "False", "TenantSuspended", f"the tenant is suspended: {f.tenant_suspended}", c,
                       start_job=True, pause_job=True, paused_reason="TenantSuspended")
    if f.suspend:
        return Verdict("Paused", "False", "Suspended", "paused by spec.suspend; set it to false to resume", c,
                       start_job=True, pause_job=True, paused_reason="Suspended")
    if f.job.exists:
        waiting = f.progress is not None and f.progress.done
        message = (f"all submitted; waiting for final outcomes: {done_msg}, {c['deferred']} deferred" if waiting
                   else f"{c['sent']} of {c['total']} submitted; {done_msg}")
        return Verdict("Sending", "False", "WaitingForOutcomes" if waiting else "Sending", message, c,
                       reconciling=True, start_job=True)
    return Verdict("Pending", "Unknown", "Starting", "creating the sender Job", c, reconciling=True, start_job=True)
