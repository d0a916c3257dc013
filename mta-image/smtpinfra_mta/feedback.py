"""Asynchronous bounces and complaints -> (tenant, recipient) -> suppression. Pure decisions.

A report arriving on port 25 is matched through the VERP return path it was sent to (the envelope
recipient) or that it quotes (ARF ``Original-Mail-From``, the original's ``Return-Path``). Only an
authentic token counts, so nobody can suppress addresses of a tenant by mailing us made-up reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtpinfra_mta.bounces import classify
from smtpinfra_mta.reports import Report
from smtpinfra_mta.verp import Verp


@dataclass(frozen=True)
class Outcome:
    """What a report means for one tenant recipient."""

    tenant: str
    address: str
    event: str  # "hard_bounce", "soft_bounce", "complaint"
    detail: str  # status / feedback type, for the suppression reason and logs

    @property
    def suppress(self) -> bool:
        return self.event in ("hard_bounce", "complaint")


def _matches(report: Report, envelope_rcpts: list[str], verp: Verp) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for addr in [*envelope_rcpts, *report.return_paths]:
        hit = verp.decode(addr)
        if hit is not None and hit not in found:
            found.append(hit)
    return found


def outcomes(report: Report, envelope_rcpts: list[str], verp: Verp) -> list[Outcome]:
    """The per-recipient consequences of an inbound report (empty when it matches none of our tokens)."""
    out: list[Outcome] = []
    for tenant, rcpt in _matches(report, envelope_rcpts, verp):
        if report.kind == "complaint":
            out.append(Outcome(tenant, rcpt, "complaint", f"ARF {report.feedback_type or 'abuse'}"))
            continue
        if report.kind != "bounce":
            continue
        # The token names the recipient; use the DSN's entries for it (all entries when the remote MTA
        # rewrote Final-Recipient, e.g. after forwarding).
        idx = [i for i, r in enumerate(report.recipients) if r.lower() == rcpt.lower()] or \
            list(range(len(report.recipients)))
        for i in idx:
            status = report.statuses[i] if i < len(report.statuses) else ""
            action = report.actions[i] if i < len(report.actions) else ""
            if action and action != "failed":
                continue  # delayed / delivered / relayed / expanded: not a bounce
            diag = report.diagnostics[i] if i < len(report.diagnostics) else ""
            code = 550 if status.startswith("5") else 450
            cls = classify(code, f"{status} {diag}")
            event = "hard_bounce" if cls.permanent and cls.bounce_class == "hard" else "soft_bounce"
            out.append(Outcome(tenant, rcpt, event, f"{status or cls.status} {diag}".strip()[:200]))
            break
    return out
