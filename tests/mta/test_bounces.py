"""Bounce classification, DSN construction and inbound report parsing (pure logic)."""

from __future__ import annotations

import email

import pytest

from smtpinfra_mta.bounces import RecipientFailure, build_dsn, classify, enhanced_status
from smtpinfra_mta.reports import parse_report
from smtpinfra_mta.scheduler import retry_delay

pytestmark = pytest.mark.mta


@pytest.mark.parametrize(
    ("code", "text", "cls", "status"),
    [
        (550, "5.1.1 <x@gmail.com>: Recipient address rejected: User unknown", "hard", "5.1.1"),
        (550, "Requested action not taken: mailbox unavailable", "hard", "5.0.0"),
        (552, "5.2.2 Mailbox full", "soft", "5.2.2"),
        (452, "4.2.2 The email account that you tried to reach is over quota", "soft", "4.2.2"),
        (421, "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume", "reputation",
         "4.7.0"),
        (550, "5.7.1 Service unavailable; client host [192.0.2.1] blocked using Spamhaus", "reputation", "5.7.1"),
        (550, "5.7.26 Unauthenticated email from example.com is not accepted due to DMARC policy", "policy",
         "5.7.26"),
        (554, "5.7.1 Message rejected as spam by content filtering", "policy", "5.7.1"),
        (451, "4.3.0 Temporary server error", "soft", "4.3.0"),
        (550, "4.1.1 mismatched class", "hard", "5.0.0"),
    ],
)
def test_classification(code: int, text: str, cls: str, status: str) -> None:
    c = classify(code, text)
    assert (c.bounce_class, c.status, c.permanent) == (cls, status, code >= 500)


def test_enhanced_status_must_match_code_class() -> None:
    assert enhanced_status(550, "5.1.1 x") == "5.1.1"
    assert enhanced_status(450, "5.1.1 x") == "4.0.0"


def test_retry_schedule_repeats_last_step() -> None:
    assert [retry_delay([60, 300, 900], n) for n in (1, 2, 3, 4, 10)] == [60, 300, 900, 900, 900]


def test_dsn_round_trips_through_report_parser() -> None:
    original = b"From: a@alpha.test\r\nTo: x@y.test\r\nSubject: hello\r\n\r\nsecret body\r\n"
    dsn = build_dsn(reporting_mta="mta.test", original_envelope_id="q1", mail_from="a@alpha.test", arrival=0,
                    failures=[RecipientFailure("x@y.test", "5.1.1", "550 5.1.1 unknown", "mx.y.test"),
                              RecipientFailure("z@y.test", "4.4.7", "451 4.4.7 expired")],
                    original=original, postmaster="MAILER-DAEMON@mta.test")
    msg = email.message_from_bytes(dsn)
    assert msg["To"] == "<a@alpha.test>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert b"secret body" not in dsn  # only the headers of the original are returned
    report = parse_report(dsn)
    assert report.kind == "bounce"
    assert report.recipients == ["x@y.test", "z@y.test"]
    assert report.statuses == ["5.1.1", "4.4.7"]


def test_arf_complaint_is_recognised() -> None:
    arf = (
        b"From: fbl@isp.test\r\nTo: fbl@bounces.mta.test\r\nSubject: FW: complaint\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report\r\n"
        b"--b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: x/1\r\n"
        b"Version: 1\r\n\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: a@alpha.test\r\nTo: victim@isp.test\r\n"
        b"Subject: buy\r\n\r\nbody\r\n--b--\r\n"
    )
    report = parse_report(arf)
    assert report.kind == "complaint"
    assert report.recipients == ["victim@isp.test"]
    assert parse_report(b"Subject: plain\r\n\r\nhi\r\n").kind == "other"
