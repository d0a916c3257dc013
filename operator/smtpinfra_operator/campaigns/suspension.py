"""Automatic tenant suspension on complaint or bounce rates (pure).

The MTAs count each tenant's sends, bounces and complaints over its `spec.suspension.window`
(`/stats` → `tenants`, "window"); the operator sums them over the pods and decides here. Rates are
only evaluated from `minVolume` sends in the window up (1 bounce in 13 sends suspends nobody).

A suspension sticks until a human lifts it: it is the Tenant's `Suspended` condition, and only an
annotation `smtpinfra.com/lift-suspension` with a time at or after the suspension lifts it, e.g.

    kubectl annotate tenant acme smtpinfra.com/lift-suspension=$(date -u +%Y-%m-%dT%H:%M:%SZ) --overwrite

After a lift the rates are evaluated again once one full window has passed since the lift, so the
figures then hold only mail sent after it (the ones that caused the suspension have left the window).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from smtpinfra_api.meta import parse_duration
from smtpinfra_api.v1alpha1 import SuspensionThresholds

SUSPENDED = "Suspended"
"""The Tenant condition: True while the operator keeps the tenant suspended for its rates."""
LIFT_ANNOTATION = "smtpinfra.com/lift-suspension"


@dataclass(frozen=True)
class Window:
    """A tenant's figures over its suspension window, summed over the MTA pods."""

    sent: int
    bounced: int
    complained: int


@dataclass(frozen=True)
class Decision:
    """Whether the tenant is suspended for its rates, why, and the rates (percent) it was judged on."""

    suspended: bool
    reason: str
    message: str
    bounce_rate: str | None = None
    complaint_rate: str | None = None


def _rate(part: int, whole: int) -> Decimal:
    return Decimal(part) * 100 / Decimal(whole)


def _fmt(rate: Decimal) -> str:
    return f"{rate:.2f}"


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time (as in conditions and the lift annotation); None when absent or malformed."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def suspension_decision(thresholds: SuspensionThresholds, window: Window | None, now: datetime, *,
                        suspended_since: datetime | None = None, previous_message: str = "",
                        lifted_at: datetime | None = None) -> Decision:
    """Suspend, keep suspended, or not; `suspended_since` is when the current suspension began (None: not suspended)."""
    lifted = lifted_at is not None and (suspended_since is None or lifted_at >= suspended_since)
    if suspended_since is not None and not lifted:
        return Decision(True, "RatesExceeded", previous_message or "suspended for its complaint or bounce rate")
    if lifted and lifted_at is not None and now < lifted_at + timedelta(seconds=parse_duration(thresholds.window)):
        return Decision(False, "Lifted", f"suspension lifted at {lifted_at.isoformat()}; rates are evaluated again "
                                         f"one window ({thresholds.window}) after the lift")
    if window is None:
        return Decision(False, "NoFigures", "no MTA reported figures for the window yet")
    if window.sent < thresholds.min_volume or window.sent == 0:
        return Decision(False, "BelowMinVolume",
                        f"{window.sent} sends in the last {thresholds.window}: rates count from "
                        f"{thresholds.min_volume} sends (spec.suspension.minVolume)")
    complaints, bounces = _rate(window.complained, window.sent), _rate(window.bounced, window.sent)
    figures = (f"{window.complained} complaints and {window.bounced} bounces in {window.sent} sends over the last "
               f"{thresholds.window}")
    rates = {"bounce_rate": _fmt(bounces), "complaint_rate": _fmt(complaints)}
    if complaints > Decimal(thresholds.max_complaint_rate):
        return Decision(True, "ComplaintRateExceeded",
                        f"complaint rate {_fmt(complaints)}% over the maximum {thresholds.max_complaint_rate}% "
                        f"({figures}); lift with the {LIFT_ANNOTATION} annotation", **rates)
    if bounces > Decimal(thresholds.max_bounce_rate):
        return Decision(True, "BounceRateExceeded",
                        f"bounce rate {_fmt(bounces)}% over the maximum {thresholds.max_bounce_rate}% "
                        f"({figures}); lift with the {LIFT_ANNOTATION} annotation", **rates)
    return Decision(False, "WithinThresholds", figures, **rates)


def _window_of(tenants: Mapping[str, Any], tenant: str) -> Mapping[str, Any] | None:
    """One pod's window figures of a tenant, wherever its `/stats` `tenants` object puts them."""
    for candidate in ((tenants.get(tenant) or {}) if isinstance(tenants.get(tenant), Mapping) else {},
                      ((tenants.get("accepted") or {}).get(tenant) or {}),
                      {"window": (tenants.get("window") or {}).get(tenant)}):
        window = candidate.get("window") if isinstance(candidate, Mapping) else None
        if isinstance(window, Mapping):
            return window
    return None


def window_figures(tenants_objects: Iterable[Mapping[str, Any] | None], tenant: str) -> Window | None:
    """The tenant's window figures summed over the pods' `/stats` `tenants` objects; None: no pod reported any."""
    sent = bounced = complained = 0
    found = False
    for tenants in tenants_objects:
        window = _window_of(tenants, tenant) if isinstance(tenants, Mapping) else None
        if window is None:
            continue
        found = True
        sent += int(window.get("sent") or 0)
        bounced += int(window.get("bounced") or 0)
        complained += int(window.get("complained") or 0)
    return Window(sent, bounced, complained) if found else None


def condition_of(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for condition in (body.get("status") or {}).get("conditions") or []:
        if condition.get("type") == SUSPENDED:
            return dict(condition)
    return None


def suspended_reason(body: Mapping[str, Any]) -> str:
    """Why the operator suspended this Tenant (its Suspended condition's message); empty when it did not."""
    condition = condition_of(body)
    if condition is None or condition.get("status") != "True":
        return ""
    return str(condition.get("message") or condition.get("reason") or "suspended for its rates")


def tenant_suspended(body: Mapping[str, Any]) -> bool:
    """Suspended by spec or by the operator: its campaigns pause."""
    return bool((body.get("spec") or {}).get("suspended")) or bool(suspended_reason(body))


Condition = tuple[str, str, str, str]
"""(type, status, reason, message)."""


def assess(body: Mapping[str, Any], thresholds: SuspensionThresholds,
           tenants_objects: Iterable[Mapping[str, Any] | None], now: datetime) -> tuple[Decision, Condition]:
    """The decision for one Tenant as read, and its `Suspended` condition (type, status, reason, message)."""
    name = body["metadata"]["name"]
    current = condition_of(body)
    since = parse_time(current.get("lastTransitionTime")) if current and current.get("status") == "True" else None
    lifted = parse_time(((body.get("metadata") or {}).get("annotations") or {}).get(LIFT_ANNOTATION))
    decision = suspension_decision(thresholds, window_figures(tenants_objects, name), now, suspended_since=since,
                                   previous_message=str((current or {}).get("message") or ""), lifted_at=lifted)
    status = "True" if decision.suspended else "False"
    return decision, (SUSPENDED, status, decision.reason, decision.message)
