"""The report as rich tables for a terminal, or as JSON for scripts (pure: a report in, output out)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .model import CampaignRow, Condition, Report

_READY_STYLE = {"True": "green", "False": "red", "Unknown": "yellow"}


def to_json(report: Report) -> dict[str, Any]:
    """Plain data: every field of the report, plus each campaign's count of final outcomes."""
    data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(report)))  # tuples become lists
    for row, campaign in zip(data["campaigns"], report.campaigns, strict=True):
        row["done"] = campaign.done
    return data


def _dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def ready_text(condition: Condition) -> Text:
    """Ready, its reason, and what a reader must know: stalled, or not yet observed."""
    text = Text(condition.status, style=_READY_STYLE.get(condition.status, "dim"))
    if condition.reason:
        text.append(f" {condition.reason}", style="dim")
    if condition.stalled:
        text.append(" stalled", style="bold red")
    if not condition.observed and condition.status != "-":
        text.append(" (not observed yet)", style="yellow")
    return text


def _usage(sent: int | None, quota: int | None) -> str:
    used = "-" if sent is None else f"{sent:,}"
    return f"{used} / {quota:,}" if quota else used


def _rate(value: str | None, limit: str | None) -> Text:
    if value is None:
        return Text("-")
    over = limit is not None and _percent(value) > _percent(limit)
    return Text(f"{value}% (max {limit}%)" if limit else f"{value}%", style="bold red" if over else "")


def _percent(value: str) -> float:
    try:
        return float(value.rstrip("%"))
    except ValueError:
        return 0.0


def servers_table(report: Report) -> Table:
    table = Table(title="SMTP servers and their pods", title_justify="left", expand=False)
    for column in ("Server", "Hostname", "Ready", "Replicas", "Pod", "Phase", "Queue", "Oldest", "Sessions"):
        table.add_column(column)
    for server in report.servers:
        replicas = f"{_dash(server.ready_replicas)}/{_dash(server.replicas)}"
        first = True
        for pod in server.pods or (None,):
            name = Text(f"{server.namespace}/{server.name}") if first else Text("")
            cells: list[RenderableType] = [name, server.hostname if first else "",
                                           ready_text(server.condition) if first else "", replicas if first else ""]
            if pod is None:
                cells += ["-", "-", "-", "-", "-"]
            else:
                stats_missing = Text(pod.stats_error or "-", style="dim") if pod.stats_error else Text("-")
                cells += [pod.name, Text(pod.phase + (" ready" if pod.ready else ""),
                                         style="green" if pod.ready else "yellow"),
                          _dash(pod.queue) if pod.queue is not None else stats_missing,
                          f"{pod.oldest_age_seconds:.0f}s" if pod.oldest_age_seconds is not None else "-",
                          _dash(pod.sessions)]
            table.add_row(*cells)
            first = False
    return table


def _ptr(ok: bool | None) -> RenderableType:
    if ok is None:
        return "-"
    return Text("ok", style="green") if ok else Text("mismatch", style="red")


def pools_table(report: Report) -> Table:
    table = Table(title="IP pools, per address", title_justify="left")
    for column in ("Pool", "Ready", "Address", "Assigned to", "PTR", "Warm-up day", "Cap today", "Listings",
                   "Quarantined"):
        table.add_column(column)
    for pool in report.pools:
        first = True
        for a in pool.addresses or (None,):
            cells: list[RenderableType] = [pool.name if first else "", ready_text(pool.condition) if first else ""]
            if a is None:
                cells += ["-"] * 7
            else:
                cells += [a.address, _dash(a.assigned_to),
                          _ptr(a.ptr_ok),
                          _dash(a.warmup_day), f"{a.daily_cap:,}" if a.daily_cap is not None else "-",
                          Text(", ".join(a.listings), style="red") if a.listings else "none",
                          Text("yes", style="bold red") if a.quarantined else "no"]
            table.add_row(*cells)
            first = False
    return table


def tenants_table(report: Report) -> Table:
    table = Table(title="Tenants: usage against quotas, bounce and complaint rates", title_justify="left")
    for column in ("Tenant", "Ready", "State", "This hour", "Today", "Bounce rate", "Complaint rate"):
        table.add_column(column)
    for t in report.tenants:
        state = Text(t.state or "-")
        if t.suspended:
            state = Text("Suspended (spec)", style="yellow")
        today = _usage(t.sent_today, t.quota_per_day) + (" (partial)" if t.partial else "")
        table.add_row(t.name, ready_text(t.condition), state, _usage(t.sent_this_hour, t.quota_per_hour), today,
                      _rate(t.bounce_rate, t.max_bounce_rate), _rate(t.complaint_rate, t.max_complaint_rate))
    return table


def progress(campaign: CampaignRow, width: int = 20) -> Text:
    """A bar of final outcomes against the recipients, when the total is known."""
    if not campaign.recipients:
        return Text(f"{campaign.done:,} done" if campaign.counters else "-")
    done = min(campaign.done, campaign.recipients)
    filled = round(width * done / campaign.recipients)
    bar = Text("█" * filled, style="green")
    bar.append("░" * (width - filled), style="dim")
    bar.append(f" {done:,}/{campaign.recipients:,} ({100 * done // campaign.recipients}%)")
    return bar


def campaigns_table(report: Report) -> Table:
    table = Table(title="Campaigns", title_justify="left")
    for column in ("Campaign", "Tenant", "Ready", "Phase", "Progress", "Delivered", "Deferred", "Bounced",
                   "Complained", "Unsubscribed"):
        table.add_column(column)
    for c in report.campaigns:
        phase = Text("Suspended (spec)", style="yellow") if c.suspended else Text(c.phase or "-")
        table.add_row(f"{c.namespace}/{c.name}", _dash(c.tenant), ready_text(c.condition), phase, progress(c),
                      *(f"{c.counters.get(k, 0):,}" if c.counters else "-"
                        for k in ("delivered", "deferred", "bounced", "complained", "unsubscribed")))
    return table


def render(report: Report) -> RenderableType:
    """Everything, in the order a mail team reads it."""
    parts: list[RenderableType] = [Text(f"smtp-infra report at {report.at}", style="bold")]
    parts += [servers_table(report), pools_table(report), tenants_table(report), campaigns_table(report)]
    parts += [Text(f"note: {w}", style="yellow") for w in report.warnings]
    return Group(*parts)
