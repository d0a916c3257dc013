"""A suspended tenant's submissions are refused at MAIL FROM with its reason; a reload applies it without a
restart; other tenants keep sending, and inbound reports about the tenant's mail are still handled."""

from __future__ import annotations

import copy
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from smtpinfra_mta.config import ConfigError, parse_config

from .conftest import MTA_ADDR, RunningMta, base_config, submit, swaks, wait_for

pytestmark = pytest.mark.mta

REASON = "complaint rate 0.62% over 7d (threshold 0.3%, 1300 sent)"


def _complaint(return_path: str, rcpt: str) -> str:
    return (
        f"From: fbl@isp.test\r\nTo: <{return_path}>\r\nSubject: complaint\r\nDate: {formatdate()}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"B\"\r\n\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nabuse report\r\n\r\n"
        "--B\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: abuse\r\nVersion: 1\r\nOriginal-Mail-From: <{return_path}>\r\n"
        f"Original-Rcpt-To: <{rcpt}>\r\n\r\n"
        "--B\r\nContent-Type: message/rfc822\r\n\r\n"
        f"Return-Path: <{return_path}>\r\nFrom: news@alpha.test\r\nTo: {rcpt}\r\nSubject: x\r\n\r\nbody\r\n--B--\r\n"
    )


def test_suspension_by_reload_refuses_only_that_tenant(tmp_path: Path, tls_files: Any,
                                                       password_hashes: dict[str, str], mta_factory: Any) -> None:
    cfg = base_config(tmp_path, tls_files, password_hashes)
    mta: RunningMta = mta_factory(cfg)
    assert submit(mta).has("250 2.0.0 OK queued")

    suspended = copy.deepcopy(cfg)
    suspended["tenants"][0].update(suspended=True, suspended_reason=REASON)
    mta.call(lambda: mta.app.reload(parse_config(suspended)))

    r = submit(mta)
    assert r.has("235 2.7.0"), r.replies()
    assert r.has(f"550 5.7.1 Tenant alpha is suspended: {REASON}"), r.replies()
    assert r.has("250 2.0.0 OK queued") is False
    assert submit(mta, user="bob", mail_from="news@beta.test").has("250 2.0.0 OK queued")  # others unaffected

    # reports about the suspended tenant's mail are still received and acted on
    assert mta.app.verp is not None
    return_path = mta.app.verp.address("alpha", "angry@example.test")
    rep = swaks("--server", f"{MTA_ADDR}:{mta.inbound_port}", "--ehlo", "isp.test", "--from", "<>",
                "--to", return_path, "--data", "-", stdin=_complaint(return_path, "angry@example.test"))
    assert rep.has("250 2.0.0 OK queued"), rep.transcript
    store = mta.app.suppression
    assert store is not None

    def suppressed() -> set[str]:
        return {e.address for e in mta.run(store.entries("alpha"))}
    wait_for(lambda: "angry@example.test" in suppressed(), timeout=30)
    assert mta.app.stats()["tenants"]["alpha"]["window"] == {"sent": 1, "bounced": 0, "complained": 1}

    lifted = copy.deepcopy(cfg)
    mta.call(lambda: mta.app.reload(parse_config(lifted)))
    assert submit(mta).has("250 2.0.0 OK queued")


def test_suspension_reason_may_not_carry_line_breaks(tmp_path: Path, tls_files: Any,
                                                    password_hashes: dict[str, str]) -> None:
    cfg = base_config(tmp_path, tls_files, password_hashes)
    cfg["tenants"][0].update(suspended=True, suspended_reason="bad\r\n250 OK")
    with pytest.raises(ConfigError, match="suspended_reason"):
        parse_config(cfg)
