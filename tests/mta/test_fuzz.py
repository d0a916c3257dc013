"""Fuzzing SMTP command lines against the live inbound listener: it must never relay or crash."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import MTA_ADDR, RunningMta, base_config, swaks, wait_for

pytestmark = pytest.mark.mta

VERBS = ["EHLO", "HELO", "MAIL FROM:", "RCPT TO:", "DATA", "RSET", "NOOP", "AUTH", "STARTTLS", "VRFY", "BDAT",
         "XCLIENT", "mail from:", "rcpt to:"]
ARG_CHARS = st.sampled_from([*list('<>@%!":,;[]()\\ .-_+=abcXYZ019\t'), "bounces.mta.test", "example.test"])
args = st.lists(ARG_CHARS, max_size=40).map("".join)
lines = st.tuples(st.sampled_from(VERBS), args).map(lambda t: (t[0] + t[1]).encode("utf-8", "replace")) | \
    st.binary(max_size=60).filter(lambda b: b"\n" not in b and b"\r" not in b)


def _reply(f: Any) -> bytes:
    """Read one (possibly multi-line) reply; b'' if the server closed."""
    while True:
        line: bytes = f.readline()
        if not line:
            return b""
        if len(line) < 4 or line[3:4] != b"-":
            return line


def test_fuzzed_command_lines_never_relay(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str],
                                          mta_factory: Any) -> None:
    mta: RunningMta = mta_factory(base_config(tmp_path, tls_files, password_hashes))
    accepted_rcpts: list[bytes] = []
    counter: list[int] = []

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(lines, min_size=1, max_size=10))
    def session(cmds: list[bytes]) -> None:
        counter.append(1)
        with socket.create_connection((MTA_ADDR, mta.inbound_port), timeout=5) as s:
            f = s.makefile("rb")
            assert _reply(f).startswith(b"220 ")
            for cmd in [b"EHLO fuzz.test", *cmds]:
                try:
                    s.sendall(cmd + b"\r\n")
                    r = _reply(f)
                except (ConnectionResetError, BrokenPipeError):
                    return  # the server may hang up on garbage (e.g. plain text after STARTTLS)
                if not r:
                    return
                code = r[:3]
                assert code.isdigit(), r
                if cmd.upper().startswith(b"STARTTLS") and code == b"220":
                    return  # the server now waits for a TLS handshake; plain text would just wait too
                if cmd.upper().startswith(b"RCPT") and code == b"250":
                    accepted_rcpts.append(cmd)
                if code == b"354":
                    s.sendall(b"Subject: fuzz\r\n\r\nx\r\n.\r\n")
                    assert _reply(f)[:1] in (b"2", b"4", b"5")

    session()
    assert len(counter) >= 100
    for cmd in accepted_rcpts:
        assert b"@bounces.mta.test>" in cmd.lower() or cmd.lower().rstrip().endswith(b"@bounces.mta.test"), cmd
    wait_for(lambda: mta.app.spool.queued_ids() == [])  # accepted inbound reports are processed, none relayed
    # still healthy afterwards
    r = swaks("--server", f"{MTA_ADDR}:{mta.inbound_port}", "--from", "", "--to", "x@bounces.mta.test")
    assert r.has("250 2.0.0 OK queued as"), r.transcript
