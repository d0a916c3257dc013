"""Submission listeners driven by swaks in real SMTP sessions."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from .conftest import MTA_ADDR, PASSWORDS, RunningMta, base_config, submit, swaks

pytestmark = pytest.mark.mta


@pytest.fixture
def mta(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], mta_factory: Any) -> RunningMta:
    cfg = base_config(tmp_path, tls_files, password_hashes)
    cfg["tenants"][0]["sender_domains"] = ["alpha.test"]
    cfg["tenants"][1]["quotas"] = {"per_hour": 3}
    return mta_factory(cfg)


def queued(mta: RunningMta) -> list[str]:
    return mta.app.spool.queued_ids()


def test_auth_plain_starttls_accepts_and_spools(mta: RunningMta) -> None:
    r = submit(mta)
    assert r.returncode == 0, r.transcript
    assert r.has("235 2.7.0"), r.replies()
    last = [x for x in r.replies() if x.startswith("250 2.0.0")]
    assert last and "queued as" in last[0]
    qid = last[0].split()[-1]
    assert qid in queued(mta)
    content = mta.app.spool.read_content(qid)
    assert content.startswith(b"Received: from client.test ([127.0.0.1]) (tenant alpha)")
    assert b"Hello from the test suite." in content


def test_auth_login_and_implicit_tls(mta: RunningMta) -> None:
    r = swaks("--server", f"{MTA_ADDR}:{mta.smtps_port}", "--tls-on-connect", "--auth", "LOGIN",
              "--auth-user", "alice", "--auth-password", PASSWORDS["alice"], "--from", "a@alpha.test",
              "--to", "x@example.test", "--header", "From: a@alpha.test")
    assert r.returncode == 0, r.transcript
    assert r.has("235 2.7.0") and r.has("250 2.0.0 OK queued as")
    assert len(queued(mta)) == 1


def test_wrong_password_is_refused_535(mta: RunningMta) -> None:
    r = submit(mta, password="wrong")
    assert r.returncode != 0
    assert r.has("535 5.7.8"), r.replies()
    assert queued(mta) == []


def test_unknown_user_is_refused_535(mta: RunningMta) -> None:
    r = swaks("--server", f"{MTA_ADDR}:{mta.submission_port}", "--tls", "--auth", "PLAIN", "--auth-user",
              "mallory", "--auth-password", "x", "--from", "a@alpha.test", "--to", "x@example.test")
    assert r.has("535 5.7.8"), r.replies()


def _raw_session(port: int, lines: list[bytes], tls: bool = False) -> list[str]:
    """Send command lines one at a time; return the reply lines (first line of each reply)."""
    sock = socket.create_connection((MTA_ADDR, port), timeout=10)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock)
    f = sock.makefile("rb")

    def read_reply() -> str:
        while True:
            line = f.readline().decode().rstrip("\r\n")
            if len(line) < 4 or line[3] != "-":
                return line
    out = [read_reply()]
    for line in lines:
        sock.sendall(line + b"\r\n")
        out.append(read_reply())
    sock.close()
    return out


def test_starttls_required_before_auth_and_mail(mta: RunningMta) -> None:
    replies = _raw_session(mta.submission_port, [b"EHLO c.test", b"AUTH PLAIN AGFsaWNlAHg=",
                                                 b"MAIL FROM:<a@alpha.test>", b"RCPT TO:<x@example.test>"])
    assert replies[1].startswith("250 ")
    assert replies[2].startswith("530"), replies
    assert "STARTTLS" in replies[2]
    assert replies[3].startswith("530") and replies[4].startswith("530")


def test_mail_without_auth_after_starttls_is_530(mta: RunningMta) -> None:
    r = submit(mta, user="")
    assert r.has("530 5.7.0 Authentication required"), r.replies()
    assert queued(mta) == []


def test_implicit_tls_requires_auth(mta: RunningMta) -> None:
    replies = _raw_session(mta.smtps_port, [b"EHLO c.test", b"MAIL FROM:<a@alpha.test>"], tls=True)
    assert replies[2].startswith("530 5.7.0"), replies


def test_sender_domain_must_belong_to_tenant(mta: RunningMta) -> None:
    r = submit(mta, user="alice", mail_from="ceo@beta.test")
    assert r.has("553 5.7.1"), r.replies()
    r = submit(mta, user="bob", mail_from="news@alpha.test")
    assert r.has("553 5.7.1"), r.replies()
    r = submit(mta, user="alice", mail_from="news@sub.alpha.test")
    assert r.has("250 2.0.0 OK queued"), r.replies()
    r = submit(mta, user="alice", mail_from="news@alpha.test.evil.test")
    assert r.has("553 5.7.1"), r.replies()
    assert len(queued(mta)) == 1


def test_header_from_must_belong_to_tenant(mta: RunningMta) -> None:
    r = submit(mta, user="alice", mail_from="news@alpha.test", header_from="ceo@beta.test")
    assert r.has("550 5.7.1 Header From <ceo@beta.test>"), r.replies()
    r = submit(mta, user="alice", mail_from="news@alpha.test", header_from='"Beta" <x@beta.test>')
    assert r.has("550 5.7.1"), r.replies()
    assert queued(mta) == []


def test_suspended_tenant_gets_clear_5xx(mta: RunningMta) -> None:
    r = submit(mta, user="carol", mail_from="x@gamma.test")
    assert r.has("235 2.7.0")
    assert r.has("550 5.7.1 Tenant gamma is suspended: contact your administrator"), r.replies()
    assert queued(mta) == []


def test_hourly_quota_gives_4xx(mta: RunningMta) -> None:
    for _ in range(3):
        assert submit(mta, user="bob", mail_from="n@beta.test").has("250 2.0.0 OK queued")
    r = submit(mta, user="bob", mail_from="n@beta.test")
    assert r.has("452 4.7.1 Hourly sending quota of 3 reached"), r.replies()
    assert len(queued(mta)) == 3


def test_size_limit_552(mta: RunningMta) -> None:
    r = submit(mta, body="x" * 70 + ("\n" + "y" * 70) * 3500)  # > 200 kB
    assert r.has("552"), r.replies()
    assert queued(mta) == []


def test_recipient_limit_452(mta: RunningMta) -> None:
    rcpts = ",".join(f"u{i}@example.test" for i in range(6))
    r = submit(mta, to=rcpts)
    assert r.has("452 4.5.3"), r.replies()


def test_idempotent_submission_is_queued_once(mta: RunningMta) -> None:
    extra = ["--header", "X-Idempotency-Key: order-4711"]
    r1 = submit(mta, extra=extra)
    r2 = submit(mta, extra=extra)
    id1 = next(x for x in r1.replies() if x.startswith("250 2.0.0")).split()[-1]
    id2 = next(x for x in r2.replies() if x.startswith("250 2.0.0")).split()[-1]
    assert id1 == id2
    assert "already queued" in next(x for x in r2.replies() if x.startswith("250 2.0.0"))
    assert queued(mta) == [id1]
    # another tenant using the same key is a different message
    r3 = submit(mta, user="bob", mail_from="n@beta.test", extra=extra)
    assert r3.has("250 2.0.0 OK queued as")
    assert len(queued(mta)) == 2


def test_repeated_auth_failures_disconnect(mta: RunningMta) -> None:
    sock = socket.create_connection((MTA_ADDR, mta.smtps_port), timeout=10)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(sock)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"EHLO c.test\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    codes = []
    for _ in range(3):
        s.sendall(b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n")
        codes.append(f.readline()[:3])
    assert codes == [b"535", b"535", b"421"]
    assert f.readline() == b""  # closed
    s.close()


def test_draining_mta_answers_421(mta: RunningMta) -> None:
    mta.app.draining = True
    replies = _raw_session(mta.submission_port, [])
    assert replies[0].startswith("421 4.3.2"), replies
