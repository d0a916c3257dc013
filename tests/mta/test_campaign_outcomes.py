"""Per-campaign outcomes in /stats: attributed from the Feedback-ID of the tenant's own campaigns, deferred as
a gauge, complaints and asynchronous bounces through the VERP return path, kept across a restart; the
tenants' window figures the operator's suspension decision reads."""

from __future__ import annotations

import json
import urllib.request
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from smtpinfra_mta.outcomes import OutcomeStore, campaign_of
from smtpinfra_mta.spool import SpooledMessage

from .conftest import MTA_ADDR, Dns, RunningMta, Sink, base_config, submit, swaks, wait_for

pytestmark = pytest.mark.mta

TAG = "spring:alpha:shop:smtpinfra"


def _stats(mta: RunningMta) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{MTA_ADDR}:{mta.app.http_port}/stats", timeout=5) as r:
        result: dict[str, Any] = json.loads(r.read())
        return result


def _campaign(mta: RunningMta, name: str = "shop/spring") -> dict[str, Any]:
    return dict(_stats(mta)["campaigns"].get(name) or {})


def _arf(return_path: str, rcpt: str, feedback_id: str) -> str:
    """A feedback-loop complaint quoting the original message, its Feedback-ID included."""
    return (
        f"From: fbl@isp.test\r\nTo: <{return_path}>\r\nSubject: complaint\r\nDate: {formatdate()}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"B2\"\r\n\r\n"
        "--B2\r\nContent-Type: text/plain\r\n\r\nAn abuse report.\r\n\r\n"
        "--B2\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: abuse\r\nUser-Agent: Test/1.0\r\nVersion: 1\r\nOriginal-Mail-From: <{return_path}>\r\n"
        f"Original-Rcpt-To: <{rcpt}>\r\n\r\n"
        "--B2\r\nContent-Type: message/rfc822\r\n\r\n"
        f"Return-Path: <{return_path}>\r\nFrom: news@alpha.test\r\nTo: {rcpt}\r\nFeedback-ID: {feedback_id}\r\n"
        "Subject: offers\r\n\r\nbody\r\n--B2--\r\n"
    )


def _dsn(return_path: str, rcpt: str, feedback_id: str) -> str:
    """A remote MTA's late hard bounce of a message it had accepted."""
    return (
        f"From: MAILER-DAEMON@mx.example.test\r\nTo: <{return_path}>\r\nSubject: Undelivered\r\n"
        f"Date: {formatdate()}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=\"B1\"\r\n\r\n"
        "--B1\r\nContent-Type: text/plain\r\n\r\nCould not deliver.\r\n\r\n"
        "--B1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.test\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
        "--B1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Return-Path: <{return_path}>\r\nFrom: news@alpha.test\r\nTo: {rcpt}\r\nFeedback-ID: {feedback_id}\r\n\r\n"
        "--B1--\r\n"
    )


def _report(mta: RunningMta, to: str, data: str) -> None:
    r = swaks("--server", f"{MTA_ADDR}:{mta.inbound_port}", "--ehlo", "mx.example.test", "--from", "<>",
              "--to", to, "--data", "-", stdin=data)
    assert r.has("250 2.0.0 OK queued"), r.transcript


def test_campaign_is_attributed_only_for_the_tenant_it_names() -> None:
    assert campaign_of(TAG, "alpha") == "shop/spring"
    assert campaign_of(TAG, "beta") is None  # beta cannot count mail against alpha's campaign
    assert campaign_of("spring:alpha:shop:othersender", "alpha") is None
    assert campaign_of(None, "alpha") is None


def test_counters_survive_reopening_and_window_drops_old_hours(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite"
    store = OutcomeStore(path)
    msg = SpooledMessage(id="m1", tenant="alpha", pool="p", mail_from="n@alpha.test", rcpts=["a@x.test"],
                         received_at=0.0, campaign="shop/spring")
    store.accepted(msg)
    store.deferred(msg, ["a@x.test"])
    store.tenant_event("alpha", "bounced", 3, now=1_000_000.0)  # long ago
    store.close()
    again = OutcomeStore(path)
    assert again.campaigns()["shop/spring"]["accepted"] == 1
    assert again.campaigns()["shop/spring"]["deferred"] == 1
    again.final(msg, [("a@x.test", "delivered")])
    figures = again.campaigns()["shop/spring"]
    assert (figures["deferred"], figures["delivered"]) == (0, 1)
    assert again.window("alpha", 86400) == {"sent": 1, "bounced": 0, "complained": 0}
    expired = SpooledMessage(id="m2", tenant="alpha", pool="p", mail_from="n@alpha.test", rcpts=["b@x.test"],
                             received_at=0.0, campaign="shop/spring")
    again.deferred(expired, ["b@x.test"])
    assert again.campaigns()["shop/spring"]["deferred"] == 1
    again.final(expired, [("b@x.test", "bounced")], failed=True)  # expired in the queue
    figures = again.campaigns()["shop/spring"]
    assert (figures["deferred"], figures["bounced"], figures["failed"]) == (0, 0, 1)
    assert again.window("alpha", 86400)["bounced"] == 1
    again.deferred(expired, ["c@x.test"])
    assert again.erase("c@X.TEST") == 1 and again.campaigns()["shop/spring"]["deferred"] == 0
    again.close()
    assert b"a@x.test" not in path.read_bytes()  # the deferred rows hold digests, not addresses


@pytest.mark.dns
def test_campaign_outcomes_in_stats_across_deferral_complaint_bounce_and_restart(
        tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], mta_factory: Any, sink_factory: Any,
        dns_server: Dns) -> None:
    deferring: Sink = sink_factory("-r", "RCPT", name="defer")
    cfg = base_config(tmp_path, tls_files, password_hashes, dns=dns_server, sink_port=deferring.port)
    mta: RunningMta = mta_factory(cfg)
    for rcpt in ("a@example.test", "b@example.test"):
        assert submit(mta, to=rcpt, extra=["--add-header", f"Feedback-ID: {TAG}"]).has("250 2.0.0 OK queued")
    # a tag naming another tenant, and a message without one: no campaign
    assert submit(mta, to="c@example.test", extra=["--add-header", "Feedback-ID: spring:beta:shop:smtpinfra"]
                  ).has("250 2.0.0 OK queued")
    assert submit(mta, to="d@example.test").has("250 2.0.0 OK queued")

    wait_for(lambda: _campaign(mta).get("deferred") == 2, timeout=30)
    stats = _stats(mta)
    assert list(stats["campaigns"]) == ["shop/spring"]
    assert stats["campaigns"]["shop/spring"] == {
        "tenant": "alpha", "accepted": 2, "delivered": 0, "deferred": 2, "bounced": 0, "failed": 0,
        "complained": 0, "suppressed": 0, "unsubscribed": 0}

    deferring.stop()
    good: Sink = sink_factory(port=deferring.port, name="good")
    delivered = good.wait_messages(4, timeout=40)
    wait_for(lambda: _campaign(mta).get("delivered") == 2 and _campaign(mta).get("deferred") == 0, timeout=30)

    by_rcpt = {m.rcpts[0]: m for m in delivered}
    _report(mta, by_rcpt["a@example.test"].mail_from, _arf(by_rcpt["a@example.test"].mail_from,
                                                           "a@example.test", TAG))
    _report(mta, by_rcpt["b@example.test"].mail_from, _dsn(by_rcpt["b@example.test"].mail_from,
                                                           "b@example.test", TAG))
    wait_for(lambda: _campaign(mta).get("complained") == 1 and _campaign(mta).get("bounced") == 1, timeout=30)
    assert _campaign(mta)["delivered"] == 1  # the late bounce moved b@ from delivered to bounced
    assert _stats(mta)["tenants"]["alpha"]["window"] == {"sent": 4, "bounced": 1, "complained": 1}
    assert _stats(mta)["tenants"]["beta"]["window"] == {"sent": 0, "bounced": 0, "complained": 0}

    before = _stats(mta)
    mta.stop()
    restarted: RunningMta = mta_factory(cfg)
    after = _stats(restarted)
    assert after["campaigns"] == before["campaigns"]
    assert after["tenants"]["alpha"]["window"] == before["tenants"]["alpha"]["window"]


def test_reports_are_attributed_only_to_the_tenant_the_token_names() -> None:
    store = OutcomeStore(None)
    store.reported("alpha", "hard_bounce", TAG)  # delivered by another replica: this pod's delivered goes below 0
    store.reported("beta", "complaint", TAG)  # a tag naming alpha in a report about beta's mail
    store.reported("alpha", "soft_bounce", TAG)  # not final: nothing moves
    assert store.campaigns() == {"shop/spring": {
        "tenant": "alpha", "accepted": 0, "delivered": -1, "deferred": 0, "bounced": 1, "failed": 0,
        "complained": 0, "suppressed": 0, "unsubscribed": 0}}
    assert store.window("beta", 3600) == {"sent": 0, "bounced": 0, "complained": 1}
    assert store.window("alpha", 3600) == {"sent": 0, "bounced": 1, "complained": 0}
    store.close()
