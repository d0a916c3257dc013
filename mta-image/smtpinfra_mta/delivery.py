"""Outbound SMTP client session: one connection from a bound source IP to one MX host.

Wraps aiosmtplib so the scheduler sees per-recipient outcomes instead of exceptions, and so the
source address and EHLO name always come from the same configured SourceIp.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib.errors import (
    SMTPDataError,
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from aiosmtplib.response import SMTPResponse

from smtpinfra_mta import pipeline
from smtpinfra_mta.datastream import encode_for_data, normalize_line_endings


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def line(self) -> str:
        return f"{self.code} {' '.join(self.text.split())}"

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500


@dataclass
class SendResult:
    """Outcome of one transaction: a reply per recipient (data reply for the accepted ones)."""

    per_rcpt: dict[str, Reply] = field(default_factory=dict)
    connection_usable: bool = True


class ConnectFailed(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.line)
        self.reply = reply


class OutboundConnection:
    """A connected, EHLO'd (and maybe STARTTLS'd) session, reusable for several transactions."""

    def __init__(self, smtp: aiosmtplib.SMTP, mx_host: str, address: str, source_ip: str, tls: bool) -> None:
        self.smtp = smtp
        self.mx_host = mx_host
        self.address = address
        self.source_ip = source_ip
        self.tls = tls
        self.deliveries = 0

    @classmethod
    async def open(
        cls, *, mx_host: str, address: str, port: int, source_ip: str, ehlo_name: str, starttls: str,
        verify: bool, connect_timeout: float, command_timeout: float,
    ) -> OutboundConnection:
        """Connect from ``source_ip``; raises :class:`ConnectFailed` with a synthetic 4xx on any failure."""
        smtp = aiosmtplib.SMTP(
            hostname=address, port=port, local_hostname=ehlo_name, source_address=(source_ip, 0),
            timeout=command_timeout, start_tls=False, use_tls=False, validate_certs=verify,
        )
        try:
            await smtp.connect(timeout=connect_timeout)
            await smtp.ehlo()
            tls = False
            if smtp.supports_extension("starttls") and starttls in ("opportunistic", "required"):
                ctx = ssl.create_default_context()
                if not verify:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                try:
                    await smtp.starttls(server_hostname=mx_host, tls_context=ctx)
                    await smtp.ehlo()
                    tls = True
                except (SMTPException, ssl.SSLError, OSError):
                    if starttls == "required":
                        raise
                    # Opportunistic: retry in clear text on a fresh connection.
                    smtp.close()
                    return await cls.open(
                        mx_host=mx_host, address=address, port=port, source_ip=source_ip, ehlo_name=ehlo_name,
                        starttls="none", verify=verify, connect_timeout=connect_timeout,
                        command_timeout=command_timeout,
                    )
            if starttls == "required" and not tls:
                smtp.close()
                raise ConnectFailed(Reply(451, f"4.7.5 {mx_host} does not offer STARTTLS, which policy requires"))
            return cls(smtp, mx_host, address, source_ip, tls)
        except SMTPResponseException as exc:
            smtp.close()
            code = exc.code if 400 <= exc.code < 600 else 451
            raise ConnectFailed(Reply(code, exc.message)) from None
        except (SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
            smtp.close()
            raise ConnectFailed(Reply(451, f"4.4.1 connection to {mx_host} [{address}] failed: {exc}")) from None

    async def send(self, mail_from: str, rcpts: list[str], content: bytes) -> SendResult:
        """One transaction; every recipient ends with a reply (synthetic 451 if the connection dropped)."""
        result = SendResult()
        self.deliveries += 1
        utf8 = not (mail_from.isascii() and all(r.isascii() for r in rcpts))
        if utf8 and not self.smtp.supports_extension("smtputf8"):
            # RFC 6531 3.2: never downgrade an address; what needs SMTPUTF8 bounces, the rest goes as usual.
            reply = Reply(553, f"5.6.7 {self.mx_host} does not support SMTPUTF8, which this address needs")
            for r in rcpts:
                if not (mail_from.isascii() and r.isascii()):
                    result.per_rcpt[r] = reply
            rcpts = [r for r in rcpts if r not in result.per_rcpt]
            if not rcpts:
                return result
            utf8 = False
        options, encoding = ([b"SMTPUTF8"], "utf-8") if utf8 else ([], "ascii")
        if self.smtp.supports_extension("pipelining"):
            return await self._send_pipelined(mail_from, rcpts, content, options, encoding, result)
        try:
            # MAIL and RCPT go through execute_command with the addresses exactly as they were received
            # (validated then): aiosmtplib's mail()/rcpt() re-parse every address, a tenth of delivery's CPU.
            resp = await self.smtp.execute_command(b"MAIL", b"FROM:<" + mail_from.encode(encoding) + b">", *options)
            if resp.code != 250:
                reply = Reply(resp.code, resp.message)
                for r in rcpts:
                    result.per_rcpt[r] = reply
                await self._rset(result)
                return result
            accepted = []
            for r in rcpts:
                resp = await self.smtp.execute_command(b"RCPT", b"TO:<" + r.encode(encoding) + b">")
                if resp.code in (250, 251):
                    accepted.append(r)
                else:
                    result.per_rcpt[r] = Reply(resp.code, resp.message)
            if not accepted:
                await self._rset(result)
                return result
            try:
                if self.smtp.supports_extension("chunking"):
                    resp = await self._bdat_last(normalize_line_endings(content))
                else:
                    resp = await self._data(content)
                reply = Reply(resp.code, resp.message)
            except SMTPResponseException as exc:
                reply = Reply(exc.code, exc.message)
            for r in accepted:
                result.per_rcpt[r] = reply
            if reply.code == 421:
                result.connection_usable = False
        except (SMTPServerDisconnected, SMTPException, OSError, TimeoutError) as exc:
            result.connection_usable = False
            for r in rcpts:
                result.per_rcpt.setdefault(r, Reply(451, f"4.4.2 connection to {self.mx_host} lost: {exc}"))
        except ValueError as exc:  # a command aiosmtplib refuses to send: retried, then bounced at max queue age
            result.connection_usable = False
            for r in rcpts:
                result.per_rcpt.setdefault(r, Reply(451, f"4.3.0 local error composing the transaction: {exc}"))
        return result

    async def _send_pipelined(self, mail_from: str, rcpts: list[str], content: bytes, options: list[bytes],
                              encoding: str, result: SendResult) -> SendResult:
        """The transaction as one batch (:func:`pipeline.transaction`), the replies mapped per recipient."""
        try:
            mail = b" ".join([b"FROM:<" + mail_from.encode(encoding) + b">", *options])
            rcpt_args = [b"TO:<" + r.encode(encoding) + b">" for r in rcpts]
        except ValueError as exc:  # not encodable: retried, then bounced at max queue age
            for r in rcpts:
                result.per_rcpt[r] = Reply(451, f"4.3.0 local error composing the transaction: {exc}")
            return result
        try:
            replies = await pipeline.transaction(self.smtp, mail, rcpt_args, content)
        except (SMTPException, OSError, TimeoutError) as exc:
            result.connection_usable = False
            for r in rcpts:
                result.per_rcpt[r] = Reply(451, f"4.4.2 connection to {self.mx_host} lost: {exc}")
            return result
        result.connection_usable = self.smtp.is_connected
        for i, r in enumerate(rcpts):
            if replies.mail.code != 250:
                result.per_rcpt[r] = Reply(replies.mail.code, replies.mail.message)
            elif not replies.accepted(i):
                result.per_rcpt[r] = Reply(replies.rcpts[i].code, replies.rcpts[i].message)
            else:
                result.per_rcpt[r] = Reply(replies.data.code, replies.data.message)
        if not replies.any_accepted:
            if result.connection_usable:
                await self._rset(result)
        elif replies.data.code == 421:
            result.connection_usable = False
        return result

    async def _data(self, content: bytes) -> SMTPResponse:
        """DATA with the message encoded by bytes operations (:func:`encode_for_data`) instead of aiosmtplib's
        two regular-expression passes over every byte, a large share of delivery's CPU at 20-100 KB."""
        resp = await self.smtp.execute_command(b"DATA")
        if resp.code != 354:
            raise SMTPDataError(resp.code, resp.message)
        return await self._write_and_read(encode_for_data(content))

    async def _write_and_read(self, *parts: bytes) -> SMTPResponse:
        """Write ``parts`` on aiosmtplib's protocol and read the one reply (nothing else is in flight)."""
        proto = self.smtp.protocol
        if proto is None:
            raise SMTPServerDisconnected("Connection lost")
        try:
            for part in parts:
                proto.write(part)
            return await proto.read_response(timeout=self.smtp.timeout)
        except (SMTPServerDisconnected, SMTPTimeoutError):
            self.smtp.close()  # as aiosmtplib does after a failed DATA: the session is out of step
            raise

    async def _bdat_last(self, content: bytes) -> SMTPResponse:
        """The whole message as one ``BDAT <size> LAST`` chunk (RFC 3030): no dot-stuffing, no 354 round trip.

        aiosmtplib has no BDAT, so the command and the message are written on its protocol.
        """
        return await self._write_and_read(b"BDAT %d LAST\r\n" % len(content), content)

    async def _rset(self, result: SendResult) -> None:
        try:
            await self.smtp.rset()
        except (SMTPException, OSError, TimeoutError):
            result.connection_usable = False

    async def close(self) -> None:
        try:
            if self.smtp.is_connected:
                await self.smtp.quit()
        except (SMTPException, OSError, TimeoutError):
            pass
        finally:
            self.smtp.close()
