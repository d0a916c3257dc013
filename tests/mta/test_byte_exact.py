"""Nothing changed on the way through: the bytes smtp-sink receives are the bytes submitted plus our Received
header, for 1 KiB to 10 MiB messages with lines of every length up to 998 and leading dots."""

from __future__ import annotations

import random
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from .conftest import MTA_ADDR, RunningMta, Sink, base_config, wait_for

pytestmark = pytest.mark.mta

RELAY = "internal.test"
_RECEIVED = re.compile(rb"Received: from client\.test \(\[127\.0\.0\.1\]\)\r\n\tby mta\.test \(smtp-infra\) with "
                       rb"ESMTP;\r\n\t[^\r\n]+\r\n")


def make_message(size: int, seed: int) -> bytes:
    """Headers, then body lines of every length 0..998 (cycling) over all bytes but CR and LF, every
    seventh line starting with one to three dots, truncated to whole lines near ``size``."""
    rnd = random.Random(seed)
    alphabet = bytes(b for b in range(256) if b not in (10, 13, 0))
    out = [b"From: a@partner.test\r\n", b"To: user@internal.test\r\n", f"Subject: exact {size}\r\n".encode(),
           b"\r\n"]
    total, n = sum(map(len, out)), 0
    while total < size:
        length = n % 999
        line = bytes(rnd.choices(alphabet, k=length))
        if n % 7 == 0:
            line = (b"." * (1 + n % 3) + line)[:998]
        out.append(line + b"\r\n")
        total += len(line) + 2
        n += 1
    return b"".join(out)


def dot_stuff(message: bytes) -> bytes:
    stuffed = (b"\r\n" + message).replace(b"\r\n.", b"\r\n..")[2:]
    return stuffed + b".\r\n"


class RawClient:
    """An SMTP client on a bare socket, so the bytes sent are exactly the ones written here."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((MTA_ADDR, port), timeout=60)
        self.buf = b""
        assert self.reply().startswith(b"220")

    def reply(self) -> bytes:
        while True:
            m = re.search(rb"(?:^|\r\n)(\d{3}) [^\r\n]*\r\n", self.buf)
            if m is not None:
                out, self.buf = self.buf[:m.end()], self.buf[m.end():]
                return out.split(b"\r\n")[-2]
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk

    def cmd(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.cmd(b"QUIT")
        self.sock.close()


@pytest.fixture
def relay_mta(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], mta_factory: Any,
              sink_factory: Any) -> tuple[RunningMta, Sink]:
    sink = sink_factory()
    cfg = base_config(tmp_path, tls_files, password_hashes)
    cfg["limits"]["max_message_size"] = 12 * 1024 * 1024
    cfg["listeners"]["inbound"]["relay_domains"] = [{"domain": RELAY, "pool": "beta"}]
    cfg["delivery"]["routes"] = [{"domain": RELAY, "host": "127.0.0.42", "port": sink.port}]
    return mta_factory(cfg), sink


@pytest.mark.parametrize("size", [1024, 20 * 1024, 1024 * 1024, 10 * 1024 * 1024])
def test_sink_receives_exactly_what_was_submitted(relay_mta: tuple[RunningMta, Sink], size: int) -> None:
    mta, sink = relay_mta
    message = make_message(size, seed=size)
    assert any(line.startswith(b".") for line in message.split(b"\r\n"))
    assert {len(x) for x in message.split(b"\r\n")} >= set(range(999)) or size < 1024 * 1024
    c = RawClient(mta.inbound_port)
    assert c.cmd(b"EHLO client.test").startswith(b"250 ")
    assert c.cmd(b"MAIL FROM:<a@partner.test>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<user@internal.test>").startswith(b"250")
    assert c.cmd(b"DATA").startswith(b"354")
    c.sock.sendall(dot_stuff(message))
    assert c.reply().startswith(b"250 2.0.0 OK queued"), "not accepted"
    c.close()
    # a dump is complete once smtp-sink has written its last line; a 10 MiB one takes a while on a busy machine
    [m] = wait_for(sink.messages, timeout=180)
    received = _RECEIVED.match(m.content)
    assert received is not None, m.content[:300]
    assert m.content[received.end():] == message
