"""Nothing changed on the way through: the bytes smtp-sink receives are the bytes submitted plus our Received
header, for 1 KiB to 10 MiB messages with lines of every length up to 998 and leading dots."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from .conftest import RunningMta, Sink, wait_for
from .rawsmtp import RawClient, dot_stuff, make_message, send_bdat, start_relay

pytestmark = pytest.mark.mta

_RECEIVED = re.compile(rb"Received: from client\.test \(\[127\.0\.0\.1\]\)\r\n\tby mta\.test \(smtp-infra\) with "
                       rb"ESMTP;\r\n\t[^\r\n]+\r\n")


@pytest.fixture
def relay_mta(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], mta_factory: Any,
              sink_factory: Any) -> tuple[RunningMta, Sink]:
    return start_relay(tmp_path, tls_files, password_hashes, mta_factory, sink_factory)


@pytest.mark.parametrize("transfer", ["DATA", "BDAT"])
@pytest.mark.parametrize("size", [1024, 20 * 1024, 1024 * 1024, 10 * 1024 * 1024])
def test_sink_receives_exactly_what_was_submitted(relay_mta: tuple[RunningMta, Sink], size: int,
                                                  transfer: str) -> None:
    mta, sink = relay_mta
    message = make_message(size, seed=size)
    assert any(line.startswith(b".") for line in message.split(b"\r\n"))
    assert {len(x) for x in message.split(b"\r\n")} >= set(range(999)) or size < 1024 * 1024
    c = RawClient(mta.inbound_port)
    assert c.cmd(b"EHLO client.test").startswith(b"250 ")
    assert c.cmd(b"MAIL FROM:<a@partner.test>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<user@internal.test>").startswith(b"250")
    if transfer == "DATA":
        assert c.cmd(b"DATA").startswith(b"354")
        c.sock.sendall(dot_stuff(message))
        reply = c.reply()
    else:
        reply = send_bdat(c, message, seed=size)
    assert reply.startswith(b"250 2.0.0 OK queued"), reply
    c.close()
    # a dump is complete once smtp-sink has written its last line; a 10 MiB one takes a while on a busy machine
    [m] = wait_for(sink.messages, timeout=180)
    received = _RECEIVED.match(m.content)
    assert received is not None, m.content[:300]
    assert m.content[received.end():] == message
