"""Per-campaign outcomes and per-tenant windowed figures, persisted in the spool volume.

The operator decides that a campaign is complete from these counters (summed over the pods) and that
a tenant is over its complaint or bounce threshold from the window figures, so both must survive a pod
restart: they live in SQLite next to the spool, like the quota counters. The deferred figure is a gauge
(recipients of the campaign still queued after a temporary failure); its rows are keyed by message id
and a digest of the recipient, so no address is kept here in clear.

Several processes may share the file (``delivery.separate_process``): every write is one statement and
every read goes to the database, so no cache goes stale between them.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from smtpinfra_mta.campaign_contract import address_digest, parse_feedback_id
from smtpinfra_mta.spool import SpooledMessage

log = logging.getLogger(__name__)

CampaignOutcome = Literal["accepted", "delivered", "bounced", "failed", "complained", "suppressed", "unsubscribed"]
CAMPAIGN_FIGURES: tuple[str, ...] = ("accepted", "delivered", "deferred", "bounced", "failed", "complained",
                                     "suppressed", "unsubscribed")
TenantEvent = Literal["sent", "bounced", "complained"]
MAX_WINDOW_SECONDS = 45 * 86400
"""Hourly buckets older than this are dropped (the longest suspension window the config allows)."""
_FINAL: dict[str, CampaignOutcome] = {"delivered": "delivered", "bounced": "bounced", "suppressed": "suppressed",
                                      "failed": "failed"}

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS campaign_counts (campaign TEXT NOT NULL, tenant TEXT NOT NULL,"
    " outcome TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (campaign, outcome))",
    "CREATE TABLE IF NOT EXISTS campaign_deferred (msg_id TEXT NOT NULL, rcpt_digest TEXT NOT NULL,"
    " campaign TEXT NOT NULL, PRIMARY KEY (msg_id, rcpt_digest))",
    "CREATE TABLE IF NOT EXISTS tenant_hours (tenant TEXT NOT NULL, hour INTEGER NOT NULL, event TEXT NOT NULL,"
    " n INTEGER NOT NULL, PRIMARY KEY (tenant, hour, event))",
)


def campaign_of(feedback_id: str | None, tenant: str) -> str | None:
    """The ``<namespace>/<campaign>`` a submission belongs to, if its Feedback-ID names the sending tenant.

    A tenant cannot count mail against another tenant's campaign: a tag naming another tenant is ignored.
    """
    tag = parse_feedback_id(feedback_id) if feedback_id else None
    if tag is None or tag.tenant != tenant:
        return None
    return f"{tag.namespace}/{tag.campaign}"


def _never_raises(fn: Callable[..., None]) -> Callable[..., None]:
    """Counting must never stop delivery or a report's handling: a failing write is logged and lost."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except sqlite3.Error as exc:
            log.error("outcome counter write failed", extra={"what": fn.__name__, "error": str(exc)})

    return wrapper


class OutcomeStore:
    """The counters of one spool directory (``path`` None: in memory, for tests of the pure parts)."""

    def __init__(self, path: Path | None) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(":memory:" if path is None else str(path), isolation_level=None,
                                   check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for stmt in _SCHEMA:
            self._db.execute(stmt)
        self.prune()

    def close(self) -> None:
        self._db.close()

    def prune(self, now: float | None = None) -> None:
        oldest = int(((time.time() if now is None else now) - MAX_WINDOW_SECONDS) // 3600)
        self._db.execute("DELETE FROM tenant_hours WHERE hour < ?", (oldest,))

    # ------------------------------------------------------------------ writes

    def count(self, campaign: str, tenant: str, outcome: CampaignOutcome, n: int = 1) -> None:
        if n <= 0:
            return
        self._db.execute(
            "INSERT INTO campaign_counts(campaign, tenant, outcome, n) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(campaign, outcome) DO UPDATE SET n = n + excluded.n", (campaign, tenant, outcome, n))

    def tenant_event(self, tenant: str, event: TenantEvent, n: int = 1, now: float | None = None) -> None:
        if n <= 0:
            return
        hour = int((time.time() if now is None else now) // 3600)
        self._db.execute(
            "INSERT INTO tenant_hours(tenant, hour, event, n) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(tenant, hour, event) DO UPDATE SET n = n + excluded.n", (tenant, hour, event, n))

    @_never_raises
    def accepted(self, msg: SpooledMessage) -> None:
        """A tenant submission is durably spooled (duplicates of an idempotent retry are not)."""
        if msg.kind != "submission":
            return
        self.tenant_event(msg.tenant, "sent", len(msg.rcpts))
        if msg.campaign:
            self.count(msg.campaign, msg.tenant, "accepted", len(msg.rcpts))

    @_never_raises
    def deferred(self, msg: SpooledMessage, rcpts: Iterable[str]) -> None:
        """Recipients of a campaign message failed temporarily and stay queued."""
        if not msg.campaign:
            return
        self._db.executemany(
            "INSERT INTO campaign_deferred(msg_id, rcpt_digest, campaign) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [(msg.id, address_digest(r), msg.campaign) for r in rcpts])

    @_never_raises
    def final(self, msg: SpooledMessage, results: Iterable[tuple[str, str]], *, failed: bool = False) -> None:
        """Recipients reached a final outcome (spool status); ``failed``: bounced because the message expired."""
        if msg.kind != "submission":
            return
        results = list(results)
        bounced = sum(1 for _, status in results if status == "bounced")
        self.tenant_event(msg.tenant, "bounced", bounced)
        if not msg.campaign:
            return
        self._db.executemany("DELETE FROM campaign_deferred WHERE msg_id=? AND rcpt_digest=?",
                             [(msg.id, address_digest(r)) for r, _ in results])
        for status in {s for _, s in results}:
            outcome = _FINAL.get(status)
            if outcome is None:
                continue
            if outcome == "bounced" and failed:
                outcome = "failed"
            self.count(msg.campaign, msg.tenant, outcome, sum(1 for _, s in results if s == status))

    @_never_raises
    def unsubscribed(self, campaign: str, tenant: str) -> None:
        """A recipient of the campaign used its one-click link (first time only)."""
        self.count(campaign, tenant, "unsubscribed")

    @_never_raises
    def reported(self, tenant: str, event: str, feedback_id: str | None) -> None:
        """An inbound report (ARF complaint, asynchronous DSN) matched one of the tenant's recipients."""
        campaign = campaign_of(feedback_id, tenant)
        if event == "complaint":
            self.tenant_event(tenant, "complained")
            if campaign:
                self.count(campaign, tenant, "complained")
        elif event == "hard_bounce":
            self.tenant_event(tenant, "bounced")
            if campaign:
                # A late bounce of mail counted as delivered: it moves, so the final outcomes never add up to
                # more than the recipients. The delivering replica may be another one, so one pod's
                # 'delivered' may go below zero; the sum over the pods is exact.
                self.count(campaign, tenant, "bounced")
                self._db.execute("UPDATE campaign_counts SET n = n - 1 WHERE campaign=? AND outcome='delivered'",
                                 (campaign,))
                self._db.execute("INSERT INTO campaign_counts(campaign, tenant, outcome, n) VALUES (?, ?, ?, -1)"
                                 " ON CONFLICT(campaign, outcome) DO NOTHING", (campaign, tenant, "delivered"))

    def erase(self, address: str) -> int:
        """Forget the deferred rows of ``address`` (its digest is not salted, so it counts as the address)."""
        cur = self._db.execute("DELETE FROM campaign_deferred WHERE rcpt_digest=?", (address_digest(address),))
        return cur.rowcount

    # ------------------------------------------------------------------ reads

    def campaigns(self) -> dict[str, dict[str, Any]]:
        """The /stats ``campaigns`` object: every figure of every campaign this spool has seen."""
        out: dict[str, dict[str, Any]] = {}
        for campaign, tenant, outcome, n in self._db.execute(
                "SELECT campaign, tenant, outcome, n FROM campaign_counts ORDER BY campaign"):
            entry = out.setdefault(campaign, {"tenant": tenant, **dict.fromkeys(CAMPAIGN_FIGURES, 0)})
            entry[outcome] = int(n)
        for campaign, n in self._db.execute(
                "SELECT campaign, count(*) FROM campaign_deferred GROUP BY campaign"):
            if campaign in out:
                out[campaign]["deferred"] = int(n)
        return out

    def window(self, tenant: str, seconds: float, now: float | None = None) -> dict[str, int]:
        """Sent, bounced and complained of ``tenant`` over the last ``seconds`` (whole hours, the current one
        included)."""
        now = time.time() if now is None else now
        first = int((now - seconds) // 3600) + 1
        figures = {"sent": 0, "bounced": 0, "complained": 0}
        for event, n in self._db.execute(
                "SELECT event, sum(n) FROM tenant_hours WHERE tenant=? AND hour >= ? GROUP BY event", (tenant, first)):
            figures[str(event)] = int(n)
        return figures
