"""Delivery to a real remote MX (Postfix smtp-sink) found through a real DNS server (Knot)."""

from __future__ import annotations

import email
import logging
import smtplib
import ssl
from email.message import Message
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import pytest

from .conftest import (
    DSN_SINK_ADDR,
    MTA_ADDR,
    PASSWORDS,
    SINK_ADDR,
    SRC_A1,
    SRC_B,
    Dns,
    RunningMta,
    Sink,
    base_config,
    submit,
    wait_for,
)

pytestmark = [pytest.mark.mta, pytest.mark.dns]


@pytest.fixture
def env(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], sink_factory: Any, dns_server: Dns,
        dkim_keys: Any) -> dict[str, Any]:
    sink = sink_factory()
    dsn_sink = sink_factory(port=sink.port, addr=DSN_SINK_ADDR, name="dsn")
    cfg = base_config(tmp_path, tls_files, password_hashes, dns=dns_server, sink_port=sink.port, dkim=dkim_keys)
    return {"cfg": cfg, "sink": sink, "dsn_sink": dsn_sink, "dns": dns_server, "sink_factory": sink_factory}


def _dsn_parts(content: bytes) -> tuple[Message, list[Message]]:
    msg = email.message_from_bytes(content)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    assert isinstance(parts, list)
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = parts[1].get_payload()
    assert isinstance(status, list)
    return msg, [b for b in status if isinstance(b, Message)]


def test_delivery_binds_pool_source_ip_and_ehlo(env: dict[str, Any], mta_factory: Any) -> None:
    mta: RunningMta = mta_factory(env["cfg"])
    sink: Sink = env["sink"]
    assert submit(mta, to="first@example.test").has("250 2.0.0 OK queued")
    assert submit(mta, user="bob", mail_from="n@beta.test", to="second@other.test").has("250 2.0.0 OK queued")
    got = {m.rcpts[0]: m for m in sink.wait_messages(2)}
    assert got["first@example.test"].client_addr == SRC_A1
    assert got["first@example.test"].helo == "out1.alpha-pool.test"
    # VERP: the return path names tenant and recipient, so a later asynchronous bounce can be matched
    assert mta.app.verp is not None
    assert got["first@example.test"].mail_from.startswith("bounces+")
    assert mta.app.verp.decode(got["first@example.test"].mail_from) == ("alpha", "first@example.test")
    assert mta.app.verp.decode(got["second@other.test"].mail_from) == ("beta", "second@other.test")
    assert got["second@other.test"].client_addr == SRC_B
    assert got["second@other.test"].helo == "out1.beta-pool.test"
    assert b"Hello from the test suite." in got["first@example.test"].content
    wait_for(lambda: mta.app.spool.queued_ids() == [])


def test_implicit_mx_and_multiple_domains_in_one_message(env: dict[str, Any], mta_factory: Any) -> None:
    mta: RunningMta = mta_factory(env["cfg"])
    assert submit(mta, to="a@example.test,b@implicit.test,c@example.test").has("250 2.0.0 OK queued")
    msgs = env["sink"].wait_messages(2)
    rcpts = sorted(r for m in msgs for r in m.rcpts)
    assert rcpts == ["a@example.test", "b@implicit.test", "c@example.test"]
    wait_for(lambda: mta.app.spool.queued_ids() == [])


def _dns_txt(dns_server: Dns) -> Any:
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [dns_server.address]
    res.port = dns_server.port

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        ans = res.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(r.strings) for r in ans)
    return dnsfunc


def test_dkim_rsa_and_ed25519_signatures_verify(env: dict[str, Any], mta_factory: Any) -> None:
    mta: RunningMta = mta_factory(env["cfg"])
    assert submit(mta, to="dkim@example.test").has("250 2.0.0 OK queued")
    [received] = env["sink"].wait_messages(1)
    content = received.content
    d = dkim.DKIM(content)
    sigs = list(email.message_from_bytes(content).get_all("DKIM-Signature") or [])
    assert len(sigs) == 2
    algos = sorted(("a=ed25519-sha256" in s.replace(" ", "") and "ed") or "rsa" for s in sigs)
    assert algos == ["ed", "rsa"]
    dnsfunc = _dns_txt(env["dns"])
    assert d.verify(idx=0, dnsfunc=dnsfunc)
    assert d.verify(idx=1, dnsfunc=dnsfunc)
    # and a tampered body must fail, so the check above is meaningful
    tampered = content.replace(b"Hello from the test suite.", b"Hello from an attacker.")
    assert not dkim.verify(tampered, dnsfunc=dnsfunc)


def test_connection_reuse_within_idle_timeout(env: dict[str, Any], mta_factory: Any) -> None:
    env["cfg"]["delivery"]["idle_timeout"] = "3s"
    env["cfg"]["throttling"] = {"rules": [{"scope": "default", "connection_limit": 1}]}
    mta: RunningMta = mta_factory(env["cfg"])
    sink: Sink = env["sink"]
    for i in range(3):
        assert submit(mta, to=f"reuse{i}@example.test").has("250 2.0.0 OK queued")
    msgs = sink.wait_messages(3)
    assert sorted(m.rcpts[0] for m in msgs) == [f"reuse{i}@example.test" for i in range(3)]
    assert sink.sessions() == 0  # all three over the one connection, still open (idle)
    wait_for(lambda: sink.sessions() == 1, timeout=10)  # closed once idle_timeout passed


def test_4xx_is_retried_then_delivered(env: dict[str, Any], mta_factory: Any) -> None:
    sink: Sink = env["sink"]
    sink.stop()
    deferring = env["sink_factory"]("-r", "RCPT", port=sink.port, name="defer")
    mta: RunningMta = mta_factory(env["cfg"])
    assert submit(mta, to="later@example.test").has("250 2.0.0 OK queued")

    def deferred() -> float:
        return float(mta.app.metrics.registry.get_sample_value(
            "smtpinfra_mta_deferred_total",
            {"tenant": "alpha", "pool": "alpha", "source_ip": SRC_A1, "provider": "other"}) or 0)
    wait_for(lambda: deferred() >= 1)
    assert deferring.messages() == []
    deferring.stop()
    good = env["sink_factory"](port=sink.port, name="good")
    [m] = good.wait_messages(1, timeout=20)
    assert m.rcpts == ["later@example.test"]
    wait_for(lambda: mta.app.spool.queued_ids() == [])
    assert env["dsn_sink"].messages() == []


def test_5xx_bounces_with_rfc3464_dsn_to_sender(env: dict[str, Any], mta_factory: Any) -> None:
    sink: Sink = env["sink"]
    sink.stop()
    env["sink_factory"]("-f", "RCPT", "-B", "550 5.1.1 No such user here", port=sink.port, name="reject")
    mta: RunningMta = mta_factory(env["cfg"])
    assert submit(mta, to="nobody@example.test").has("250 2.0.0 OK queued")
    [dsn] = env["dsn_sink"].wait_messages(1, timeout=20)
    assert dsn.mail_from == ""
    assert dsn.rcpts == ["news@alpha.test"]
    assert dsn.client_addr == SRC_A1
    _, status = _dsn_parts(dsn.content)
    assert status[1]["Final-Recipient"] == "rfc822; nobody@example.test"
    assert status[1]["Action"] == "failed"
    assert status[1]["Status"] == "5.1.1"
    assert "No such user here" in status[1]["Diagnostic-Code"]
    assert status[0]["Reporting-MTA"] == "dns; mta.test"
    assert mta.app.metrics.registry.get_sample_value(
        "smtpinfra_mta_bounced_total",
        {"tenant": "alpha", "pool": "alpha", "source_ip": SRC_A1, "provider": "other", "bounce_class": "hard"},
    ) == 1
    wait_for(lambda: mta.app.spool.queued_ids() == [])


def test_max_queue_age_bounces_with_4_4_7(env: dict[str, Any], mta_factory: Any) -> None:
    sink: Sink = env["sink"]
    sink.stop()
    env["sink_factory"]("-r", "RCPT", port=sink.port, name="defer")
    env["cfg"]["delivery"]["max_queue_age"] = "2s"
    env["cfg"]["delivery"]["retry_schedule"] = ["0.5s"]
    mta: RunningMta = mta_factory(env["cfg"])
    assert submit(mta, to="slow@example.test").has("250 2.0.0 OK queued")
    [dsn] = env["dsn_sink"].wait_messages(1, timeout=20)
    _, status = _dsn_parts(dsn.content)
    assert status[1]["Status"] == "4.4.7"
    assert status[1]["Action"] == "failed"
    wait_for(lambda: mta.app.spool.queued_ids() == [])


def test_null_mx_bounces_immediately(env: dict[str, Any], mta_factory: Any) -> None:
    mta: RunningMta = mta_factory(env["cfg"])
    assert submit(mta, to="x@nullmx.test").has("250 2.0.0 OK queued")
    [dsn] = env["dsn_sink"].wait_messages(1, timeout=20)
    _, status = _dsn_parts(dsn.content)
    assert status[1]["Status"] == "5.1.10"
    assert env["sink"].messages() == []


def test_starttls_required_defers_when_mx_lacks_it(env: dict[str, Any], mta_factory: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The sink offers no STARTTLS: each attempt to tls.test is deferred with 4.7.5, retries included."""
    caplog.set_level(logging.INFO, logger="smtpinfra_mta")
    env["cfg"]["delivery"]["tls_policies"] = [{"domain": "tls.test", "mode": "required"}]
    mta: RunningMta = mta_factory(env["cfg"])
    assert submit(mta, to="secret@tls.test").has("250 2.0.0 OK queued")
    assert submit(mta, to="plain@example.test").has("250 2.0.0 OK queued")

    def tls_deferrals() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "deferred" and getattr(r, "domain", "") == "tls.test"]
    wait_for(lambda: len(tls_deferrals()) >= 2, timeout=30)  # retry_schedule 1s: the first retry was refused too
    deferrals = tls_deferrals()
    assert [getattr(r, "attempts", None) for r in deferrals[:2]] == [1, 2]
    assert all(" 4.7.5 " in getattr(r, "reply", "") for r in deferrals), [getattr(r, "reply", "") for r in deferrals]
    assert [m.rcpts for m in env["sink"].wait_messages(1)] == [["plain@example.test"]]
    assert len(mta.app.spool.queued_ids()) == 1


def _submit_smtputf8(mta: RunningMta, rcpts: list[str]) -> tuple[int, bytes]:
    """Submission with the SMTPUTF8 parameter (RFC 6531); swaks cannot send internationalized addresses."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(MTA_ADDR, mta.submission_port, timeout=10) as s:
        s.starttls(context=ctx)
        s.login("alice", PASSWORDS["alice"])
        body = "From: news@alpha.test\r\nSubject: utf8\r\n\r\nGrüße.\r\n".encode()
        s.mail("news@alpha.test", ["SMTPUTF8", "BODY=8BITMIME"])
        for r in rcpts:
            s.rcpt(r)
        return s.data(body)


def test_internationalized_address_to_an_mx_without_smtputf8_bounces_5_6_7(env: dict[str, Any],
                                                                          mta_factory: Any) -> None:
    """RFC 6531 3.2: an address that needs SMTPUTF8 is never sent to a server that lacks it; it bounces, and
    the ASCII recipients of the same message are delivered."""
    mta: RunningMta = mta_factory(env["cfg"])
    code, _ = _submit_smtputf8(mta, ["jörg@example.test", "ascii@example.test"])
    assert code == 250
    [delivered] = env["sink"].wait_messages(1)
    assert delivered.rcpts == ["ascii@example.test"]
    [dsn] = env["dsn_sink"].wait_messages(1, timeout=20)
    _, status = _dsn_parts(dsn.content)
    assert status[1]["Status"] == "5.6.7"
    assert status[1]["Action"] == "failed"
    assert "SMTPUTF8" in status[1]["Diagnostic-Code"]
    wait_for(lambda: mta.app.spool.queued_ids() == [])


def test_internationalized_address_goes_with_smtputf8_to_an_mx_that_has_it(env: dict[str, Any],
                                                                            mta_factory: Any) -> None:
    """The remote MX here is aiosmtpd (smtp-sink does not offer SMTPUTF8) on the sink's address and port."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import Envelope

    received: list[tuple[list[str], list[str]]] = []

    class Record:
        async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
            received.append((list(envelope.rcpt_tos), list(envelope.mail_options)))
            return "250 2.0.0 OK"

    sink: Sink = env["sink"]
    sink.stop()
    peer = Controller(Record(), hostname=SINK_ADDR, port=sink.port, enable_SMTPUTF8=True)
    peer.start()
    try:
        mta: RunningMta = mta_factory(env["cfg"])
        code, _ = _submit_smtputf8(mta, ["jörg@example.test"])
        assert code == 250
        wait_for(lambda: received)
        assert received[0][0] == ["jörg@example.test"]
        assert "SMTPUTF8" in received[0][1]
        assert env["dsn_sink"].messages() == []
        wait_for(lambda: mta.app.spool.queued_ids() == [])
    finally:
        peer.stop()
