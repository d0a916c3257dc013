"""CHUNKING (RFC 3030 BDAT) and PIPELINING on our listeners: advertised, pipelined, refused in step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smtpinfra_mta.datastream import parse_bdat

from .conftest import MTA_ADDR, RunningMta, Sink, swaks, wait_for
from .rawsmtp import RawClient, start_relay

pytestmark = pytest.mark.mta



@pytest.fixture
def relay_mta(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], mta_factory: Any,
              sink_factory: Any) -> tuple[RunningMta, Sink]:
    return start_relay(tmp_path, tls_files, password_hashes, mta_factory, sink_factory)


HEAD = b"From: a@partner.test\r\nSubject: chunks\r\n\r\n"


def _session(mta: RunningMta) -> RawClient:
    c = RawClient(mta.inbound_port)
    c.sock.sendall(b"EHLO client.test\r\n")
    ehlo = c.reply()
    assert ehlo.startswith(b"250 ")
    return c


def test_ehlo_advertises_chunking_and_pipelining(relay_mta: tuple[RunningMta, Sink]) -> None:
    mta, _ = relay_mta
    r = swaks("--server", f"{MTA_ADDR}:{mta.inbound_port}", "--quit-after", "EHLO")
    lines = [x[4:] for x in r.replies()]
    for ext in ("PIPELINING", "CHUNKING", "8BITMIME", "SMTPUTF8"):
        assert ext in lines, lines


def test_pipelined_transaction_with_bdat_chunks(relay_mta: tuple[RunningMta, Sink]) -> None:
    """MAIL, two RCPTs and three BDAT chunks in one write, then the next transaction: every reply in order."""
    mta, sink = relay_mta
    c = _session(mta)
    body = b"line one\r\n.leading dot kept as is\r\nlast\r\n"
    msg = HEAD + body
    a, b = msg[:10], msg[10:25]
    rest = msg[25:]
    c.sock.sendall(b"MAIL FROM:<a@partner.test>\r\nRCPT TO:<u1@internal.test>\r\nRCPT TO:<u2@internal.test>\r\n"
                   + f"BDAT {len(a)}\r\n".encode() + a + f"BDAT {len(b)}\r\n".encode() + b
                   + f"BDAT {len(rest)} LAST\r\n".encode() + rest + b"NOOP\r\n")
    replies = [c.reply() for _ in range(7)]
    assert [r[:3] for r in replies] == [b"250"] * 7, replies
    assert replies[3] == b"250 2.0.0 10 octets received"
    assert replies[5].startswith(b"250 2.0.0 OK queued")
    c.close()
    m = sink.wait_messages(1)[0]
    assert sorted(m.rcpts) == ["u1@internal.test", "u2@internal.test"]
    assert m.content.endswith(msg)


def test_pipelined_replies_go_back_together(relay_mta: tuple[RunningMta, Sink]) -> None:
    """RFC 2920 3.2: the replies to a pipelined group leave in one write once its last command is answered;
    a reply the client has to wait for (354) is never held back."""
    mta, sink = relay_mta
    c = _session(mta)
    msg = HEAD + b"body\r\n"
    c.sock.sendall(b"MAIL FROM:<a@partner.test>\r\nRCPT TO:<u1@internal.test>\r\nRCPT TO:<u2@internal.test>\r\n"
                   + f"BDAT {len(msg)} LAST\r\n".encode() + msg)
    first = c.sock.recv(65536)
    lines = first.split(b"\r\n")
    assert len(lines) == 5 and lines[4] == b"" and [x[:3] for x in lines[:4]] == [b"250"] * 4, first
    assert lines[3].startswith(b"250 2.0.0 OK queued")
    c.sock.sendall(b"RSET\r\nMAIL FROM:<a@partner.test>\r\nRCPT TO:<u1@internal.test>\r\nDATA\r\n")
    replies = [c.reply() for _ in range(4)]
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354"], replies
    c.sock.sendall(msg + b".\r\n")
    assert c.reply().startswith(b"250 2.0.0 OK queued")
    c.close()
    assert len(sink.wait_messages(2)) == 2


def test_refused_chunks_are_read_so_the_session_stays_in_step(relay_mta: tuple[RunningMta, Sink]) -> None:
    """BDAT without RCPT is refused but its bytes are consumed, even bytes that look like commands."""
    mta, sink = relay_mta
    c = _session(mta)
    evil = b"MAIL FROM:<x@partner.test>\r\nRCPT TO:<v@internal.test>\r\n"
    c.sock.sendall(f"BDAT {len(evil)} LAST\r\n".encode() + evil)
    assert c.reply().startswith(b"503 5.5.1")
    assert c.cmd(b"NOOP").startswith(b"250")
    # DATA in the middle of a BDAT transfer is refused; RSET ends the transfer
    assert c.cmd(b"MAIL FROM:<a@partner.test>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<u@internal.test>").startswith(b"250")
    c.sock.sendall(b"BDAT 5\r\nabcde")
    assert c.reply() == b"250 2.0.0 5 octets received"
    assert c.cmd(b"DATA").startswith(b"503 5.5.1")
    assert c.cmd(b"RSET").startswith(b"250")
    c.sock.sendall(b"BDAT 3 LAST\r\nxyz")
    assert c.reply().startswith(b"503 5.5.1")  # the transaction went with RSET
    c.close()
    assert mta.app.data_memory.used == 0
    assert sink.messages() == []


def test_size_and_line_limits_apply_to_chunks(relay_mta: tuple[RunningMta, Sink]) -> None:
    mta, sink = relay_mta
    limit = mta.cfg.limits.max_message_size
    c = _session(mta)
    assert c.cmd(b"MAIL FROM:<a@partner.test>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<u@internal.test>").startswith(b"250")
    half = HEAD + b"x" * 900 + b"\r\n"
    big = half * (limit // len(half) + 1)
    c.sock.sendall(f"BDAT {len(big)}\r\n".encode() + big)
    assert c.reply().startswith(b"552 5.3.4")
    c.sock.sendall(b"BDAT 4 LAST\r\nabcd")
    assert c.reply().startswith(b"503 5.5.1")  # the refused message took its transaction with it
    assert c.cmd(b"MAIL FROM:<a@partner.test>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<u@internal.test>").startswith(b"250")
    long_line = HEAD + b"y" * 600
    c.sock.sendall(f"BDAT {len(long_line)}\r\n".encode() + long_line)
    assert c.reply().startswith(b"250 2.0.0")
    tail = b"y" * 600 + b"\r\n"  # one line of 1,202 bytes across two chunks
    c.sock.sendall(f"BDAT {len(tail)} LAST\r\n".encode() + tail)
    assert c.reply().startswith(b"500 5.5.2")
    c.close()
    assert mta.app.data_memory.used == 0
    assert sink.messages() == []


def test_malformed_bdat_closes_the_session(relay_mta: tuple[RunningMta, Sink]) -> None:
    mta, _ = relay_mta
    c = _session(mta)
    c.sock.sendall(b"BDAT ten LAST\r\nRSET\r\n")
    assert c.reply().startswith(b"501 5.5.4")
    assert c.sock.recv(100) == b""


@pytest.mark.parametrize(("arg", "expected"), [
    ("10", (10, False)), ("0 LAST", (0, True)), ("7 last", (7, True)),
    ("", None), ("-1", None), ("1 2", None), ("10 LAST x", None), ("\uff11\uff12", None), ("9" * 13, None),
])
def test_parse_bdat(arg: str, expected: Any) -> None:
    assert parse_bdat(arg) == expected


def test_memory_of_a_dropped_bdat_transfer_is_given_back(relay_mta: tuple[RunningMta, Sink]) -> None:
    """A client that hangs up between chunks leaves nothing counted against the DATA memory ceiling."""
    mta, sink = relay_mta
    c = _session(mta)
    assert c.cmd(b"MAIL FROM:<a@partner.test>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<u@internal.test>").startswith(b"250")
    chunk = HEAD + (b"z" * 70 + b"\r\n") * 700
    c.sock.sendall(f"BDAT {len(chunk)}\r\n".encode() + chunk)
    assert c.reply().startswith(b"250 2.0.0")
    assert mta.app.data_memory.used >= len(chunk)
    c.sock.close()
    wait_for(lambda: mta.app.data_memory.used == 0)
    assert mta.app.spool.queued_ids() == []
    assert sink.messages() == []
