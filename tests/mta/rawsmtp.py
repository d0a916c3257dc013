"""A bare-socket SMTP client and message builders for byte-level tests: what is sent is exactly what is written."""

from __future__ import annotations

import asyncio
import random
import re
import socket
import threading
from pathlib import Path
from typing import Any

from .conftest import MTA_ADDR, RunningMta, Sink, base_config

RELAY = "internal.test"


def make_message(size: int, seed: int) -> bytes:
    """Headers, then body lines of every length 0..998 (cycling) over all bytes but CR and LF, every
    seventh line starting with one to three dots, truncated to whole lines near ``size``."""
    rnd = random.Random(seed)
    alphabet = bytes(b for b in range(256) if b not in (10, 13, 0))
    out = [b"From: a@partner.test\r\n", b"To: user@internal.test\r\n", f"Subject: exact {size}\r\n".encode(),
           b"Date: Tue, 1 Dec 2026 01:00:00 +0000\r\n", f"Message-ID: <{seed}.{size}@partner.test>\r\n".encode(),
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

    def __init__(self, port: int, host: str = MTA_ADDR) -> None:
        self.sock = socket.create_connection((host, port), timeout=60)
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


def send_bdat(c: RawClient, message: bytes, seed: int) -> bytes:
    """The message in BDAT chunks of random sizes, all pipelined; the last reply (to ``BDAT n LAST``)."""
    rnd = random.Random(seed)
    pos, out = 0, []
    while True:
        n = rnd.randint(1, max(len(message) // 5, 1))
        piece = message[pos:pos + n]
        pos += len(piece)
        last = pos >= len(message)
        out.append(f"BDAT {len(piece)}{' LAST' if last else ''}\r\n".encode() + piece)
        if last:
            break
    c.sock.sendall(b"".join(out))
    replies = [c.reply() for _ in out]
    assert all(r.startswith(b"250 2.0.0") for r in replies[:-1]), replies
    return replies[-1]


def start_relay(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], mta_factory: Any,
                sink_factory: Any) -> tuple[RunningMta, Sink]:
    """An MTA relaying ``internal.test`` from port 25 to a fresh smtp-sink, messages up to 12 MiB."""
    sink = sink_factory()
    cfg = base_config(tmp_path, tls_files, password_hashes)
    cfg["limits"]["max_message_size"] = 12 * 1024 * 1024
    cfg["listeners"]["inbound"]["relay_domains"] = [{"domain": RELAY, "pool": "beta"}]
    cfg["delivery"]["routes"] = [{"domain": RELAY, "host": "127.0.0.42", "port": sink.port}]
    return mta_factory(cfg), sink


class RecordingProxy:
    """A TCP relay in front of a real SMTP peer that keeps the bytes the client sent, to show which commands
    went over the wire (BDAT or DATA, pipelined or not); the peer itself answers everything."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen, self.target = listen, target
        self.sent = bytearray()
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._session, *self.listen)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)
        up_r, up_w = await asyncio.open_connection(*self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
            while chunk := await src.read(65536):
                if record:
                    self.sent.extend(chunk)
                dst.write(chunk)
                await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_w, True), pump(up_r, writer, False), return_exceptions=True)

    def stop(self) -> None:
        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._sessions):
                task.cancel()
            await asyncio.gather(*self._sessions, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
