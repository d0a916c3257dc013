"""Kubernetes-convention status for every kind, as pure functions.

One outcome of a reconciliation (is the object ready, why, is the operator still working on
it, is it stuck until a human acts) becomes `observedGeneration` plus three conditions:

- ``Ready``: the summary; ``Unknown`` until the operator has an answer.
- ``Reconciling``: abnormal-true, while the operator works toward the desired state.
- ``Stalled``: abnormal-true, when it cannot progress without a change by the user.

This is the shape kstatus, ``kubectl wait --for=condition=Ready``, Flux and Argo CD read.
``lastTransitionTime`` only moves when a condition's status flips, so re-deriving the same
outcome produces the same status and no write at all (no hot loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from smtpinfra_kube import thaw

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"


@dataclass(frozen=True)
class Outcome:
    """What a reconciliation concluded about one object."""

    ready: str
    """True, False or Unknown."""
    reason: str
    """CamelCase reason for Ready."""
    message: str = ""
    """Human readable details for Ready."""
    reconciling: bool = False
    """The operator is still converging (e.g. pods starting)."""
    stalled: bool = False
    """Progress needs a change by the user (invalid spec, missing reference)."""
    fields: dict[str, Any] = field(default_factory=dict)
    """Kind-specific status fields (camelCase), replaced as a whole on every write."""
    extra_conditions: tuple[tuple[str, str, str, str], ...] = ()
    """Further conditions as (type, status, reason, message), e.g. ConfigApplied."""


def pending(message: str = "Waiting for the operator to reconcile this object") -> Outcome:
    """First-sight outcome: nothing known yet."""
    return Outcome(ready=UNKNOWN, reason="Pending", message=message, reconciling=True)


def now_rfc3339() -> str:
    """Current time in the format metav1.Time serialises to (second precision, Z)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """Return conditions with ``type_`` set; ``lastTransitionTime`` kept unless status flips."""
    previous = next((c for c in conditions if c.get("type") == type_), None)
    transition = now
    if previous is not None and previous.get("status") == status and previous.get("lastTransitionTime"):
        transition = previous["lastTransitionTime"]
    entry: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        entry["observedGeneration"] = generation
    others = [c for c in conditions if c.get("type") != type_]
    return [*others, entry] if previous is None else [
        entry if c.get("type") == type_ else c for c in conditions
    ]


def build_status(current: dict[str, Any] | None, outcome: Outcome, generation: int | None, now: str) -> dict[str, Any]:
    """The full status (minus operator bookkeeping) an outcome produces from the current one."""
    current = current or {}
    conditions: list[dict[str, Any]] = [dict(c) for c in current.get("conditions") or []]
    conditions = set_condition(conditions, READY, outcome.ready, outcome.reason, outcome.message, generation, now)
    if outcome.reconciling:
        conditions = set_condition(conditions, RECONCILING, TRUE, outcome.reason, outcome.message, generation, now)
    else:
        conditions = set_condition(conditions, RECONCILING, FALSE, "Reconciled",
                                   "The operator has acted on the latest spec", generation, now)
    if outcome.stalled:
        conditions = set_condition(conditions, STALLED, TRUE, outcome.reason, outcome.message, generation, now)
    else:
        conditions = set_condition(conditions, STALLED, FALSE, "NotStalled", "", generation, now)
    for type_, value, reason, message in outcome.extra_conditions:
        conditions = set_condition(conditions, type_, value, reason, message, generation, now)
    result: dict[str, Any] = {"conditions": conditions}
    if generation is not None:
        result["observedGeneration"] = generation
    result.update(outcome.fields)
    return result


def status_patch(current: dict[str, Any] | None, desired: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch taking ``current`` to ``desired`` for the keys we own; {} when equal.

    Keys we no longer set (a field that became unknown) are nulled so stale values do not linger,
    also inside nested objects (a merge patch merges them rather than replacing them); the
    operator's ``kopf`` bookkeeping is never touched.
    """
    current = {k: v for k, v in (current or {}).items() if k != "kopf"}
    return _merge_diff(current, desired)


def _merge_diff(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        before = thaw(current.get(key))  # a cached status may hold a large field compressed
        if isinstance(before, dict) and isinstance(value, dict):
            if nested := _merge_diff(before, value):
                patch[key] = nested
        elif before != value:
            patch[key] = value
    patch.update({k: None for k in current if k not in desired})
    return patch


def get_condition(status: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    """The condition of that type, if present."""
    for condition in (status or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return dict(condition)
    return None
