"""Our delivery pipelines (RFC 2920) when the next hop offers PIPELINING.

The peer here is a scripted server on loopback that answers nothing until the whole batch of a
transaction has arrived: a client waiting for each reply before the next command never gets one and
the test fails on its timeout. The batch's shape and the per-recipient outcomes are asserted; a
server without PIPELINING gets one command at a time. Interoperability with real Postfix and
smtp-sink is in ``test_postfix_interop`` and ``test_delivery``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from smtpinfra_mta.delivery import OutboundConnection
from smtpinfra_mta.pipeline import ReplyReader

pytestmark = pytest.mark.mta

ADDR = "127.0.0.61"
MESSAGE = b"From: a@sender.test\r\nSubject: pipelined\r\n\r\n.leading dot\r\nbody\r\n"


@dataclass
class Script:
    """What the scripted server offers and answers; it records every byte it received per transaction."""

    extensions: list[str]
    mail: bytes = b"250 2.1.0 ok"
    rcpt: Callable[[bytes], bytes] = lambda line: b"550 5.1.1 no such user" if b"nobody" in line else b"250 ok"
    data: bytes = b"354 go ahead"
    final: bytes = b"250 2.0.0 queued"
    close_after_mail: bool = False
    batches: list[bytes] = field(default_factory=list)
    lockstep_violations: int = 0
    """Commands that arrived before the reply to the previous one (only counted without PIPELINING)."""


async def _handle(script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 scripted ESMTP\r\n")
    await reader.readline()  # EHLO
    lines = ["scripted", *script.extensions]
    writer.write(b"".join(f"250{'-' if i < len(lines) - 1 else ' '}{x}\r\n".encode() for i, x in enumerate(lines)))
    pipelining = "PIPELINING" in script.extensions
    while True:
        line = await reader.readline()
        if not line or line.upper().startswith(b"QUIT"):
            writer.write(b"221 bye\r\n")
            await writer.drain()
            writer.close()
            return
        if line.upper().startswith(b"RSET"):
            writer.write(b"250 reset\r\n")
            continue
        if not pipelining and len(reader._buffer) > 0:  # type: ignore[attr-defined]
            script.lockstep_violations += 1
        received = line
        replies = [script.mail]
        if script.close_after_mail:
            writer.write(script.mail + b"\r\n")
            await writer.drain()
            writer.close()
            return
        if not pipelining:
            writer.write(script.mail + b"\r\n")
            await writer.drain()
        while True:  # RCPTs, then DATA or BDAT
            line = await reader.readline()
            received += line
            if line.upper().startswith(b"RCPT"):
                replies.append(script.rcpt(line))
            else:
                break
            if not pipelining:
                if len(reader._buffer) > 0:  # type: ignore[attr-defined]
                    script.lockstep_violations += 1
                writer.write(replies.pop() + b"\r\n")
                await writer.drain()
        accepted = any(r.startswith(b"2") for r in replies[1:]) and script.mail.startswith(b"2")
        if line.upper().startswith(b"BDAT"):
            size = int(line.split()[1])
            received += await reader.readexactly(size)
            replies.append(script.final if accepted else b"554 5.5.1 no valid recipients")
            writer.write(b"".join(r + b"\r\n" for r in replies))
        else:  # DATA
            data_reply = script.data if accepted or script.data == b"354 anyway" else b"554 5.5.1 no valid recipients"
            replies.append(data_reply)
            writer.write(b"".join(r + b"\r\n" for r in replies))
            if data_reply.startswith(b"354"):
                while (data_line := await reader.readline()) not in (b".\r\n", b""):
                    received += data_line
                received += data_line
                writer.write(script.final + b"\r\n")
        await writer.drain()
        script.batches.append(received)


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[int]:
    server = await asyncio.start_server(lambda r, w: _handle(script, r, w), ADDR, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def _connect(port: int) -> OutboundConnection:
    return await OutboundConnection.open(mx_host="mx.test", address=ADDR, port=port, source_ip="127.0.0.1",
                                         ehlo_name="out.test", starttls="none", verify=False,
                                         connect_timeout=5, command_timeout=5)


@pytest.mark.parametrize("chunking", [False, True])
def test_one_batch_per_transaction_with_per_recipient_outcomes(chunking: bool) -> None:
    asyncio.run(assert_one_batch_per_transaction_with_per_recipient_outcomes(chunking))


async def assert_one_batch_per_transaction_with_per_recipient_outcomes(chunking: bool) -> None:
    script = Script(["PIPELINING", *(["CHUNKING"] if chunking else [])])
    async with scripted(script) as port:
        conn = await _connect(port)
        result = await conn.send("a@sender.test", ["u1@x.test", "nobody@x.test", "u2@x.test"], MESSAGE)
        assert {r: reply.line for r, reply in result.per_rcpt.items()} == {
            "u1@x.test": "250 2.0.0 queued", "u2@x.test": "250 2.0.0 queued",
            "nobody@x.test": "550 5.1.1 no such user"}
        assert result.connection_usable
        again = await conn.send("a@sender.test", ["u3@x.test"], MESSAGE)  # the session stays in step
        assert again.per_rcpt["u3@x.test"].line == "250 2.0.0 queued"
        await conn.close()
    first = script.batches[0]
    assert first.startswith(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<u1@x.test>\r\nRCPT TO:<nobody@x.test>\r\n")
    if chunking:
        assert first.endswith(b"BDAT %d LAST\r\n" % len(MESSAGE) + MESSAGE)
    else:
        stuffed = MESSAGE.replace(b"\n.leading", b"\n..leading")
        assert first.endswith(b"DATA\r\n" + stuffed + b".\r\n")


@pytest.mark.parametrize("chunking", [False, True])
def test_refused_sender_gives_every_recipient_its_reply(chunking: bool) -> None:
    asyncio.run(assert_refused_sender_gives_every_recipient_its_reply(chunking))


async def assert_refused_sender_gives_every_recipient_its_reply(chunking: bool) -> None:
    script = Script(["PIPELINING", *(["CHUNKING"] if chunking else [])], mail=b"553 5.7.1 sender refused")
    async with scripted(script) as port:
        conn = await _connect(port)
        result = await conn.send("a@sender.test", ["u1@x.test", "u2@x.test"], MESSAGE)
        assert {r.line for r in result.per_rcpt.values()} == {"553 5.7.1 sender refused"}
        assert result.connection_usable
        assert (await conn.send("a@sender.test", ["u1@x.test"], MESSAGE)).per_rcpt["u1@x.test"].code == 553
        await conn.close()


def test_a_354_without_recipients_is_ended_by_a_lone_dot() -> None:
    asyncio.run(assert_a_354_without_recipients_is_ended_by_a_lone_dot())


async def assert_a_354_without_recipients_is_ended_by_a_lone_dot() -> None:
    """A server that says 354 although it refused every RCPT (RFC 2920 3.1) gets an empty message: a dot."""
    script = Script(["PIPELINING"], data=b"354 anyway", final=b"554 5.5.1 nothing to deliver")
    async with scripted(script) as port:
        conn = await _connect(port)
        result = await conn.send("a@sender.test", ["nobody@x.test"], MESSAGE)
        assert result.per_rcpt["nobody@x.test"].line == "550 5.1.1 no such user"
        assert result.connection_usable
        await conn.close()
    assert script.batches[0].endswith(b"DATA\r\n.\r\n")


def test_peer_gone_mid_batch_defers_every_recipient() -> None:
    asyncio.run(assert_peer_gone_mid_batch_defers_every_recipient())


async def assert_peer_gone_mid_batch_defers_every_recipient() -> None:
    script = Script(["PIPELINING", "CHUNKING"], close_after_mail=True)
    async with scripted(script) as port:
        conn = await _connect(port)
        result = await conn.send("a@sender.test", ["u1@x.test", "u2@x.test"], MESSAGE)
        assert not result.connection_usable
        assert {r.code for r in result.per_rcpt.values()} == {451}
        assert not conn.smtp.is_connected
        await conn.close()


def test_without_pipelining_one_command_at_a_time() -> None:
    asyncio.run(assert_without_pipelining_one_command_at_a_time())


async def assert_without_pipelining_one_command_at_a_time() -> None:
    script = Script([])
    async with scripted(script) as port:
        conn = await _connect(port)
        result = await conn.send("a@sender.test", ["u1@x.test", "nobody@x.test"], MESSAGE)
        assert result.per_rcpt["u1@x.test"].code == 250 and result.per_rcpt["nobody@x.test"].code == 550
        await conn.close()
    assert script.batches and script.lockstep_violations == 0


def test_reply_reader_splits_replies_arriving_together_and_in_pieces() -> None:
    reader = ReplyReader()
    reader.data_received(b"250 ok\r\n250-first\r\n250-second\r\n250 third\r\n5")
    reader.data_received(b"50 5.1.1 gone\r\n")
    loop = asyncio.new_event_loop()
    try:
        replies = [loop.run_until_complete(reader.reply_within(1)) for _ in range(3)]
    finally:
        loop.close()
    assert [(r.code, r.message) for r in replies] == [(250, "ok"), (250, "first\nsecond\nthird"),
                                                       (550, "5.1.1 gone")]
    assert reader.clean


@pytest.mark.parametrize("garbage", [b"hello\r\n", b"2\r\n", b"250" + b"x" * 5000 + b"\r\n",
                                     b"250-a\r\n" * 101 + b"250 b\r\n", b"250 " + b"y" * 3000])
def test_reply_reader_refuses_garbage(garbage: bytes) -> None:
    reader = ReplyReader()
    reader.data_received(garbage)
    assert reader.lost is not None and not reader.clean
