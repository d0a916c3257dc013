"""Connection budgets per listener and client address, session deadlines, the DATA memory ceiling (item 4)."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import MTA_ADDR, PASSWORDS, RunningMta, base_config, submit, wait_for

pytestmark = pytest.mark.mta


def _connect(port: int) -> tuple[socket.socket, Any]:
    sock = socket.create_connection((MTA_ADDR, port), timeout=30)
    return sock, sock.makefile("rb")


def _reply(f: Any) -> str:
    while True:
        line = f.readline().decode()
        if not line:
            return ""
        if len(line) < 4 or line[3] != "-":
            return line.rstrip("\r\n")


@pytest.fixture
def limited(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], mta_factory: Any) -> RunningMta:
    cfg = base_config(tmp_path, tls_files, password_hashes)
    cfg["limits"].update({
        "max_message_size": 4 * 1024 * 1024,
        "max_data_memory": 1024 * 1024,
        "inbound": {"max_connections": 6, "max_connections_per_ip": 4, "session_time_limit": "3s"},
        "submission": {"max_connections": 10, "max_connections_per_ip": 10},
    })
    return mta_factory(cfg)


def test_idle_port25_connections_at_the_per_ip_maximum_do_not_stop_submission(limited: RunningMta) -> None:
    held = []
    try:
        for _ in range(4):
            sock, f = _connect(limited.inbound_port)
            assert _reply(f).startswith("220 "), "an allowed connection is greeted"
            held.append((sock, f))
        sock, f = _connect(limited.inbound_port)
        assert _reply(f).startswith("421 4.7.0 Too many connections from your address")
        sock.close()
        # Port 25 is at its limit for this address; submission on 587 has its own budget.
        r = submit(limited)
        assert r.has("250 2.0.0 OK queued as"), r.replies()
        assert len(limited.app.spool.queued_ids()) == 1
    finally:
        for s, _ in held:
            s.close()
    # Closed connections give their slots back.
    wait_for(lambda: limited.call(lambda: limited.app.connections.count("inbound")) == 0, 30)
    sock, f = _connect(limited.inbound_port)
    assert _reply(f).startswith("220 ")
    sock.close()


def test_noop_cannot_extend_a_session_past_its_deadline(limited: RunningMta) -> None:
    sock, f = _connect(limited.inbound_port)
    try:
        assert _reply(f).startswith("220 ")
        sock.sendall(b"EHLO client.test\r\n")
        assert _reply(f).startswith("250")
        started = time.monotonic()
        last = ""
        while time.monotonic() - started < 60:
            try:
                sock.sendall(b"NOOP\r\n")
            except OSError:
                break
            last = _reply(f)
            if not last.startswith("250"):
                break
            time.sleep(0.2)
        assert last.startswith("421 4.4.2"), last
    finally:
        sock.close()


def test_noop_budget_per_session(limited: RunningMta) -> None:
    sock, f = _connect(limited.submission_port)
    try:
        assert _reply(f).startswith("220 ")
        replies = []
        for _ in range(102):
            sock.sendall(b"NOOP\r\n")
            replies.append(_reply(f))
            if not replies[-1].startswith("250"):
                break
        assert replies[-1].startswith("421"), replies[-3:]
        assert sum(r.startswith("250") for r in replies) == 100
    finally:
        sock.close()


def _start_data(port: int) -> tuple[ssl.SSLSocket, Any]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw, f = _connect(port)
    assert _reply(f).startswith("220 ")
    raw.sendall(b"EHLO client.test\r\n")
    _reply(f)
    raw.sendall(b"STARTTLS\r\n")
    assert _reply(f).startswith("220")
    sock = ctx.wrap_socket(raw)
    f = sock.makefile("rb")
    import base64
    sock.sendall(b"EHLO client.test\r\n")
    _reply(f)
    token = base64.b64encode(f"\0alice\0{PASSWORDS['alice']}".encode()).decode()
    for cmd in (f"AUTH PLAIN {token}", "MAIL FROM:<news@alpha.test>", "RCPT TO:<u@example.test>", "DATA"):
        sock.sendall(cmd.encode() + b"\r\n")
        reply = _reply(f)
        assert reply[:1] in ("2", "3"), (cmd, reply)
    sock.sendall(b"From: news@alpha.test\r\nSubject: big\r\n\r\n")
    return sock, f


def test_concurrent_data_beyond_the_memory_ceiling_is_452_not_a_crash(limited: RunningMta) -> None:
    chunk = (b"x" * 998 + b"\r\n") * 700  # ~700 KB; two of them pass the 1 MiB ceiling
    a, fa = _start_data(limited.submission_port)
    b, fb = _start_data(limited.submission_port)
    try:
        a.sendall(chunk)  # held by session A while it has not ended its message
        wait_for(lambda: limited.call(lambda: limited.app.data_memory.used) >= len(chunk), 30)
        b.sendall(chunk + b".\r\n")
        assert _reply(fb).startswith("452 4.3.1"), "the second message does not fit beside the first"
        a.sendall(b".\r\n")
        assert _reply(fa).startswith("250 2.0.0"), "the first is accepted"
        # Both released their bytes: the same message fits again.
        assert limited.call(lambda: limited.app.data_memory.used) == 0
        b.sendall(b"MAIL FROM:<news@alpha.test>\r\n")
        assert _reply(fb).startswith("250")
        b.sendall(b"RCPT TO:<u@example.test>\r\nDATA\r\n")
        assert _reply(fb).startswith("250") and _reply(fb).startswith("354")
        b.sendall(b"From: news@alpha.test\r\n\r\n" + chunk + b".\r\n")
        assert _reply(fb).startswith("250 2.0.0")
    finally:
        a.close()
        b.close()
    assert len(limited.app.spool.queued_ids()) == 2


def test_overlong_line_is_refused_and_the_session_stays_in_step(limited: RunningMta) -> None:
    """An over-long DATA line (ending in '.') is discarded whole: DATA ends at the real marker, with 500."""
    sock, f = _start_data(limited.submission_port)
    try:
        sock.sendall(b"x" * 200_000 + b".\r\n")  # longer than the stream's line limit; its tail is '.\r\n'
        sock.sendall(b"MAIL FROM:<smuggled@alpha.test>\r\n.\r\n")
        assert _reply(f).startswith("500 5.5.2 Line too long")
        sock.sendall(b"NOOP\r\n")
        assert _reply(f).startswith("250")
    finally:
        sock.close()
    assert limited.app.spool.queued_ids() == []
