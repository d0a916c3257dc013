"""Asynchronous DSNs (RFC 3464) and ARF complaints (RFC 5965) sent with swaks to port 25 are matched
back to tenant and recipient through the VERP return path, and hard bounces / complaints end up on the
tenant's suppression list."""

from __future__ import annotations

from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from smtpinfra_mta.feedback import outcomes
from smtpinfra_mta.reports import parse_report
from smtpinfra_mta.verp import Verp, load_or_create_key

from .conftest import MTA_ADDR, Dns, RunningMta, Sink, base_config, submit, swaks, wait_for

pytestmark = pytest.mark.mta

RP = "bounces.mta.test"


def dsn(return_path: str, rcpt: str, status: str, diagnostic: str, action: str = "failed") -> str:
    """What a remote MTA sends hours after accepting a message it then could not deliver."""
    return (
        f"From: Mail Delivery System <MAILER-DAEMON@mx.example.test>\r\nTo: <{return_path}>\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\nDate: {formatdate()}\r\nMIME-Version: 1.0\r\n"
        "Auto-Submitted: auto-replied\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B1"\r\n\r\n'
        "--B1\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients.\r\n\r\n"
        "--B1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.test\r\nArrival-Date: Thu, 26 Nov 2026 04:00:00 +0000\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nOriginal-Recipient: rfc822; {rcpt}\r\nAction: {action}\r\n"
        f"Status: {status}\r\nRemote-MTA: dns; store.example.test\r\nDiagnostic-Code: smtp; {diagnostic}\r\n\r\n"
        "--B1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Return-Path: <{return_path}>\r\nFrom: news@alpha.test\r\nTo: {rcpt}\r\nSubject: hello\r\n\r\n"
        "--B1--\r\n"
    )


def arf(return_path: str, rcpt: str) -> str:
    """A feedback-loop complaint: the recipient pressed "this is spam"."""
    return (
        f"From: fbl@isp.test\r\nTo: <{return_path}>\r\nSubject: FW: complaint\r\nDate: {formatdate()}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="B2"\r\n\r\n'
        "--B2\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report for an email message received\r\n"
        "from IP 127.0.0.21 on Thu, 26 Nov 2026 04:00:00 +0000.\r\n\r\n"
        "--B2\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: SomeGenerator/1.0\r\nVersion: 1\r\n"
        f"Original-Mail-From: <{return_path}>\r\nOriginal-Rcpt-To: <{rcpt}>\r\n"
        "Arrival-Date: Thu, 26 Nov 2026 04:00:00 +0000\r\nSource-IP: 127.0.0.21\r\n\r\n"
        "--B2\r\nContent-Type: message/rfc822\r\n\r\n"
        f"Return-Path: <{return_path}>\r\nFrom: news@alpha.test\r\nTo: {rcpt}\r\nSubject: buy now\r\n\r\n"
        "body\r\n--B2--\r\n"
    )


def _send_report(mta: RunningMta, to: str, data: str) -> None:
    r = swaks("--server", f"{MTA_ADDR}:{mta.inbound_port}", "--ehlo", "mx.example.test", "--from", "<>",
              "--to", to, "--data", "-", stdin=data)
    assert r.has("250 2.0.0 OK queued"), r.transcript


def _suppressed(mta: RunningMta, tenant: str) -> dict[str, str]:
    assert mta.app.suppression is not None
    entries = mta.run(mta.app.suppression.entries(tenant))
    return {e.address: e.reason for e in entries}


@pytest.mark.dns
def test_async_dsn_and_arf_complaint_suppress_the_recipient(
        tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], mta_factory: Any, sink_factory: Any,
        dns_server: Dns) -> None:
    sink: Sink = sink_factory()
    mta = mta_factory(base_config(tmp_path, tls_files, password_hashes, dns=dns_server, sink_port=sink.port))
    for rcpt in ("gone@example.test", "full@example.test", "angry@example.test"):
        assert submit(mta, to=rcpt).has("250 2.0.0 OK queued")
    sent = {m.rcpts[0]: m.mail_from for m in sink.wait_messages(3)}
    assert all(rp.endswith(f"@{RP}") and rp.startswith("bounces+") for rp in sent.values()), sent

    # a hard bounce hours later, to the VERP address the message went out with
    _send_report(mta, sent["gone@example.test"],
                 dsn(sent["gone@example.test"], "gone@example.test", "5.1.1", "550 5.1.1 User unknown"))
    # a soft one (mailbox full) must not suppress
    _send_report(mta, sent["full@example.test"],
                 dsn(sent["full@example.test"], "full@example.test", "4.2.2", "452 4.2.2 Mailbox full",
                     action="delayed"))
    # an ARF complaint sent to the feedback address (not the VERP one): matched via Original-Mail-From
    _send_report(mta, f"fbl@{RP}", arf(sent["angry@example.test"], "angry@example.test"))

    wait_for(lambda: len(_suppressed(mta, "alpha")) >= 2, timeout=15)
    wait_for(lambda: mta.app.spool.queued_ids() == [])
    got = _suppressed(mta, "alpha")
    assert set(got) == {"gone@example.test", "angry@example.test"}
    assert got["gone@example.test"].startswith("hard bounce: 5.1.1")
    assert got["angry@example.test"].startswith("complaint: ARF abuse")
    assert _suppressed(mta, "beta") == {}
    assert mta.app.metrics.registry.get_sample_value("smtpinfra_mta_complained_total", {"tenant": "alpha"}) == 1

    # the suppression list now holds: the next message to the bounced address is not sent
    assert submit(mta, to="gone@example.test").has("250 2.0.0 OK queued")
    wait_for(lambda: mta.app.spool.queued_ids() == [])
    assert len(sink.messages()) == 3


def test_forged_report_suppresses_nothing(tmp_path: Path) -> None:
    verp = Verp(load_or_create_key(tmp_path / "k"), RP)
    real = verp.address("alpha", "victim@example.test")
    other_key = Verp(b"x" * 32, RP).address("alpha", "victim@example.test")
    tampered = real.replace("bounces+", "bounces+a", 1)
    for rp in (other_key, tampered, "bounces+garbage-zzzz@" + RP, f"victim@{RP}"):
        report = parse_report(dsn(rp, "victim@example.test", "5.1.1", "550 5.1.1 unknown").encode())
        assert outcomes(report, [rp], verp) == [], rp
    report = parse_report(dsn(real, "victim@example.test", "5.1.1", "550 5.1.1 unknown").encode())
    assert [(o.tenant, o.address, o.event) for o in outcomes(report, [real], verp)] == \
        [("alpha", "victim@example.test", "hard_bounce")]
    assert load_or_create_key(tmp_path / "k") == load_or_create_key(tmp_path / "k")  # stable across restarts
