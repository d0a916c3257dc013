"""A pipelined SMTP transaction (RFC 2920) on a connection aiosmtplib opened.

aiosmtplib reads exactly one reply per command it sent and drops bytes that arrive while it is not
waiting for one, so it cannot pipeline. For one transaction :func:`transaction` hands the
connection's transport to a :class:`ReplyReader`, writes MAIL, every RCPT and DATA (or
``BDAT … LAST`` with the message) at once, reads the replies in order, and hands the transport back:
connecting, EHLO, STARTTLS, AUTH, RSET and QUIT stay aiosmtplib's. The MTA's delivery and the
campaign sender both send this way (stdlib and aiosmtplib only, so the sender can import it).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib.errors import SMTPReadTimeoutError, SMTPResponseException, SMTPServerDisconnected
from aiosmtplib.protocol import SMTPProtocol
from aiosmtplib.response import SMTPResponse

from smtpinfra_mta.datastream import encode_for_data, normalize_line_endings

MAX_LINE = 2048
"""RFC 5321 4.5.3.1.5 allows 512 octets per reply line; longer ones are tolerated up to this."""
MAX_LINES = 100
"""Lines of one multi-line reply; a peer sending more is broken or hostile."""


class ReplyReader(asyncio.Protocol):
    """Parses every complete reply as it arrives (several come in one read when commands are pipelined)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._replies: deque[SMTPResponse] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.lost: BaseException | None = None

    def data_received(self, data: bytes) -> None:
        if self.lost is not None:
            return
        self._buffer += data
        try:
            self._parse()
        except SMTPResponseException as exc:
            self.lost = exc
        self._wake()

    def eof_received(self) -> bool:
        self.connection_lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = SMTPServerDisconnected(f"Connection lost: {exc}" if exc else "Unexpected EOF received")
        self._wake()

    def _parse(self) -> None:
        start = 0
        while (end := self._buffer.find(b"\n", start)) != -1:
            line = bytes(self._buffer[start:end + 1])
            start = end + 1
            if len(line) > MAX_LINE or len(self._lines) >= MAX_LINES:
                raise SMTPResponseException(-1, "Response too long")
            if not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                raise SMTPResponseException(-1, f"Malformed SMTP response line: {line!r:.80}")
            self._lines.append(line)
            if line[3:4] != b"-":
                text = b"\n".join(part[4:].strip(b" \t\r\n") for part in self._lines)
                self._replies.append(SMTPResponse(int(line[:3]), text.decode("utf-8", "surrogateescape")))
                self._lines = []
        del self._buffer[:start]
        if len(self._buffer) > MAX_LINE:
            raise SMTPResponseException(-1, "Response too long")

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def reply(self) -> SMTPResponse:
        """The next reply in order; raises as aiosmtplib would when the peer is gone. The caller bounds the
        wait (aiosmtplib's command timeout), as a reply is awaited once per command."""
        while not self._replies:
            if self.lost is not None:
                raise self.lost
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._replies.popleft()

    async def reply_within(self, seconds: float | None) -> SMTPResponse:
        try:
            async with asyncio.timeout(seconds):
                return await self.reply()
        except TimeoutError:
            raise SMTPReadTimeoutError("Timed out waiting for server response") from None

    @property
    def clean(self) -> bool:
        """Connected, and every reply read: the session can carry another transaction."""
        return self.lost is None and not self._replies and not self._buffer and not self._lines


@contextmanager
def borrowed(protocol: SMTPProtocol | None) -> Iterator[tuple[asyncio.WriteTransport, ReplyReader]]:
    """The connection's transport with a :class:`ReplyReader` on it, given back to aiosmtplib afterwards.

    When the reader is not :attr:`ReplyReader.clean` at the end (the peer went away, sent garbage or
    more replies than commands), the caller closes the session: it is out of step.
    """
    transport = protocol.transport if protocol is not None else None
    if protocol is None or transport is None or transport.is_closing():
        raise SMTPServerDisconnected("Connection lost")
    reader = ReplyReader()
    transport.set_protocol(reader)
    try:
        yield transport, reader  # type: ignore[misc]
    finally:
        transport.set_protocol(protocol)


@dataclass(frozen=True)
class Replies:
    """The replies of one transaction, in the order of its commands."""

    mail: SMTPResponse
    rcpts: list[SMTPResponse]
    """One per RCPT; after a refused MAIL they answer nothing (503) and the MAIL reply counts."""
    data: SMTPResponse
    """The reply to the message (after a 354), or to DATA/BDAT itself when that was refused."""

    def accepted(self, index: int) -> bool:
        return self.mail.code == 250 and self.rcpts[index].code in (250, 251)

    @property
    def any_accepted(self) -> bool:
        return any(self.accepted(i) for i in range(len(self.rcpts)))


async def transaction(smtp: aiosmtplib.SMTP, mail: bytes, rcpts: list[bytes], content: bytes) -> Replies:
    """MAIL, every RCPT and DATA (or ``BDAT <size> LAST`` with the message) in one write; the replies in order.

    ``mail`` is the MAIL command's argument (``FROM:<a@b> SMTPUTF8``), ``rcpts`` the RCPT arguments.
    One round trip before the data with DATA, none with CHUNKING. With BDAT the message goes even
    when every RCPT is refused (the server reads and refuses the chunk, RFC 3030 section 2); after a
    354 with no recipient accepted, a lone dot ends the empty transaction (RFC 2920 section 3.1).
    A session left out of step (the peer gone, a garbled or surplus reply) is closed before this
    raises :class:`SMTPServerDisconnected` or returns.
    """
    chunking = smtp.supports_extension("chunking")
    batch = [b"MAIL " + mail + b"\r\n", *(b"RCPT " + r + b"\r\n" for r in rcpts)]
    if chunking:
        body = normalize_line_endings(content)
        batch += [b"BDAT %d LAST\r\n" % len(body), body]
    else:
        batch.append(b"DATA\r\n")
    timeout = smtp.timeout
    try:
        with borrowed(smtp.protocol) as (transport, reader):
            try:
                transport.writelines(batch)
                mail_reply = await reader.reply_within(timeout)
                rcpt_replies = [await reader.reply_within(timeout) for _ in rcpts]
                replies = Replies(mail_reply, rcpt_replies, await reader.reply_within(timeout))
                if not chunking and replies.data.code == 354:
                    transport.write(encode_for_data(content) if replies.any_accepted else b".\r\n")
                    replies = Replies(mail_reply, rcpt_replies, await reader.reply_within(timeout))
            finally:
                clean = reader.clean
    except BaseException:
        smtp.close()
        raise
    if not clean:
        smtp.close()
    return replies
