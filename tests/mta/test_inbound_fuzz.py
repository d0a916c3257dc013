"""Fuzzing the inbound report path of the live MTA: DSN and ARF structure, nesting, header sizes, charsets.

Every generated report is sent over SMTP to port 25. Afterwards: no exception escaped on the MTA's
event loop, every report left the queue (handled or quarantined, counted), and the delivery loop's
latency stayed bounded while the reports were parsed (a liveness bound, not a benchmark).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import RunningMta, base_config, wait_for
from .hostile import RP, LoopProbe, send_report

pytestmark = pytest.mark.mta

CHARSETS = ["us-ascii", "utf-8", "iso-8859-1", "utf-16", "x-unknown", "", '"', "utf-8''%ff"]
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


def _encode(text: str, charset: str) -> bytes:
    try:
        return text.encode(charset or "utf-8")
    except (LookupError, UnicodeError):
        return text.encode("utf-8", "replace")


@st.composite
def header_value(draw: st.DrawFn) -> bytes:
    """Plain, 8-bit, RFC 2047 encoded, huge, folded, or comment-nested header values."""
    kind = draw(st.sampled_from(["plain", "8bit", "encoded", "long", "folded", "comments", "quote"]))
    text = draw(TEXT)
    if kind == "8bit":
        return _encode(text, draw(st.sampled_from(["latin-1", "utf-8"])))
    if kind == "encoded":
        cs = draw(st.sampled_from(CHARSETS))
        return f"=?{cs}?{draw(st.sampled_from(['B', 'Q', 'X']))}?{text.encode('utf-8').hex()}?=".encode()
    if kind == "long":  # folded: SMTP itself refuses lines over 1000 octets
        return b"\r\n ".join([b"x" * 900] * draw(st.integers(1, 40)))
    if kind == "folded":
        return b"a" + b"\r\n ;" * draw(st.integers(1, 3000))
    if kind == "comments":
        n = draw(st.integers(1, 3000))
        value = b"(" * n + b"c" + b")" * draw(st.integers(0, n)) + b" <a@b.test>"
        return b"\r\n ".join(value[i:i + 400] for i in range(0, len(value), 400))
    if kind == "quote":
        return b'x; boundary="' + b"\r\n ;" * draw(st.integers(1, 4000))
    return text.encode("utf-8")


@st.composite
def status_block(draw: st.DrawFn, verp_rcpt: str) -> bytes:
    rcpt = draw(st.sampled_from([verp_rcpt, "gone@example.test", "é@ü.test", ""]))
    lines = [b"Final-Recipient: rfc822; " + rcpt.encode(),
             b"Action: " + draw(st.sampled_from([b"failed", b"delayed", b"", b"\xff"])),
             b"Status: " + draw(st.sampled_from([b"5.1.1", b"4.2.2", b"9.9.9", b"x"])),
             b"Diagnostic-Code: smtp; " + draw(header_value())]
    return b"\r\n".join(draw(st.permutations(lines)))


@st.composite
def report(draw: st.DrawFn, verp_rp: str) -> tuple[str, bytes]:
    """(envelope recipient, content) of a DSN, an ARF report or a mangled multipart/report."""
    kind = draw(st.sampled_from(["dsn", "arf", "other"]))
    # the parameter as written (an unterminated quote before folded ';' is quadratic to parse), the delimiter
    boundary, b = draw(st.sampled_from([('"B1"', b"B1"), ('""', b""), ('"unterminated', b"unterminated"),
                                        ("x" * 200, b"x" * 70)])
                       | st.integers(100, 30_000).map(lambda n: ('"q' + "\r\n ;" * n, b"q")))
    report_type = {"dsn": "delivery-status", "arf": "feedback-report", "other": draw(st.sampled_from(["", "x"]))}
    top = (b"From: MAILER-DAEMON@mx.example.test\r\nSubject: " + draw(header_value()) + b"\r\nMIME-Version: 1.0\r\n"
           + b"Content-Type: multipart/report; report-type=" + report_type[kind].encode()
           + b"; boundary=" + boundary.encode() + b"; charset=" + draw(st.sampled_from(CHARSETS)).encode()
           + b"\r\n\r\n")
    parts = [b"Content-Type: text/plain; charset=" + draw(st.sampled_from(CHARSETS)).encode() + b"\r\n\r\n"
             + _encode(draw(TEXT), "utf-8")]
    if kind == "dsn":
        blocks = draw(st.lists(status_block(verp_rp), min_size=0, max_size=3))
        parts.append(b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.test\r\n\r\n"
                     + b"\r\n\r\n".join(blocks))
    else:
        parts.append(b"Content-Type: message/feedback-report\r\n\r\nFeedback-Type: "
                     + draw(st.sampled_from([b"abuse", b"\xe9", b""])) + b"\r\nOriginal-Mail-From: <"
                     + draw(st.sampled_from([verp_rp, "x@y.test", "bounces+aaaa-é@" + RP])).encode("utf-8")
                     + b">\r\nOriginal-Rcpt-To: " + draw(header_value()))
    # the quoted original, nested inside message/rfc822 parts ``depth`` times
    quoted = b"Return-Path: " + draw(header_value()) + b"\r\nTo: " + draw(header_value()) + b"\r\n\r\nbody"
    for _ in range(draw(st.integers(0, 400))):
        quoted = b"Content-Type: message/rfc822\r\n\r\n" + quoted
    parts.append(b"Content-Type: " + draw(st.sampled_from([b"text/rfc822-headers", b"message/rfc822"]))
                 + b"\r\n\r\n" + quoted)
    body = b"".join(b"--" + b + b"\r\n" + p + b"\r\n" for p in parts)
    if draw(st.booleans()):
        body += b"--" + b + b"--\r\n"
    rcpt = draw(st.sampled_from([verp_rp, f"fbl@{RP}", f"bounces+aaaa-é@{RP}", f"bounces+zz-zz@{RP}"]))
    return rcpt, top + body


def test_fuzzed_reports_never_escape_never_stay_queued_never_stall(
        tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], mta_factory: Any) -> None:
    cfg = base_config(tmp_path, tls_files, password_hashes)
    cfg["bounces"].update({"report_parse_timeout": "2s", "report_workers": 2})
    mta: RunningMta = mta_factory(cfg)
    assert mta.app.verp is not None
    verp_rp = mta.app.verp.address("alpha", "gone@example.test")
    probe = LoopProbe(mta).start()
    sent: list[int] = []
    refused: list[str] = []

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(report(verp_rp))
    def one(case: tuple[str, bytes]) -> None:
        rcpt, content = case
        reply = send_report(mta, rcpt, content)
        assert reply[:1] in ("2", "5"), reply  # 5xx only for content the SMTP layer refuses (size, syntax)
        if reply.startswith("250"):
            sent.append(1)
        else:
            refused.append(reply)

    one()
    assert len(sent) >= 40, refused
    wait_for(lambda: mta.app.spool.queued_ids() == [], timeout=120)
    wait_for(lambda: mta.app.inbound is not None and mta.app.inbound.pending == 0, timeout=60)
    registry = mta.app.metrics.registry
    handled = sum(registry.get_sample_value("smtpinfra_mta_inbound_reports_total", {"outcome": o}) or 0
                  for o in ("matched", "unmatched", "quarantined"))
    assert handled == len(sent)
    # caught is not enough: no report may hit an unexpected exception in our code or kill a worker
    for reason in ("error", "worker"):
        assert not registry.get_sample_value("smtpinfra_mta_inbound_quarantined_total", {"reason": reason}), reason
    probe.stop()
    assert probe.errors == []
    assert probe.max_lag < 5.0, f"delivery loop stalled {probe.max_lag:.2f}s"  # liveness, not a benchmark
