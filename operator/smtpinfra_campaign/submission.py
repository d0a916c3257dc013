"""Submission to the tenant's SmtpServer: one aiosmtplib connection per worker, replies classified.

The MTA's reply decides the ledger state: 250 -> submitted; a 4xx (quota, warm-up cap, spool) ->
wait and retry, never drop; a 5xx refusal of the recipient -> failed with the reply, or suppressed
when the MTA names its suppression list; a 5xx to MAIL FROM (the tenant suspended, the account
refused) concerns the whole campaign, so it pauses rather than failing every recipient.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from enum import StrEnum

import aiosmtplib

from smtpinfra_mta import pipeline


class TlsMode(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    IMPLICIT = "implicit"


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: TlsMode = TlsMode.STARTTLS
    verify: bool = True
    ca_file: str | None = None
    timeout: float = 60.0
    tls_name: str | None = None
    """The name the server's certificate is verified for (its spec.hostname); None: `host`. The Job
    reaches the server through its Service, whose cluster name a public certificate does not carry."""


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    SUPPRESSED = "suppressed"
    FAILED = "failed"
    RETRY = "retry"
    """Temporary: the same message again after a pause (4xx, connection lost)."""
    PAUSE = "pause"
    """Refused for the whole campaign (5xx to MAIL FROM): nothing is recorded, the sender waits."""


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    reply: str


def classify_rcpt_refusal(code: int, message: str) -> Outcome:
    """A refusal of the recipient: suppressed when the MTA says so, failed for other 5xx, else retry."""
    if 500 <= code < 600:
        return Outcome.SUPPRESSED if "suppress" in message.lower() else Outcome.FAILED
    return Outcome.RETRY


def _plain(address: str) -> bool:
    """An ASCII address that cannot break out of its command (recipients are checked when read; this
    keeps the pipelined commands safe whatever the caller passes)."""
    return address.isascii() and not any(c in address for c in "<>\r\n\0 ")


def _reply(code: int, message: str) -> str:
    return f"{code} {message}".strip()[:512]


class Submitter:
    """One SMTP session, reopened after an error; not shared between tasks."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self.smtp: aiosmtplib.SMTP | None = None

    def _tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.settings.ca_file)
        if not self.settings.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        if s.tls is TlsMode.NONE or not s.tls_name:
            smtp = aiosmtplib.SMTP(
                hostname=s.host, port=s.port, timeout=s.timeout,
                use_tls=s.tls is TlsMode.IMPLICIT,
                start_tls=s.tls is TlsMode.STARTTLS,
                tls_context=self._tls_context() if s.tls is not TlsMode.NONE else None,
                username=s.username or None, password=s.password or None,
            )
        else:
            # Connected here, so aiosmtplib's `hostname` is only the TLS name (SNI and verification).
            smtp = aiosmtplib.SMTP(
                hostname=s.tls_name, sock=await self._socket(), timeout=s.timeout,
                use_tls=s.tls is TlsMode.IMPLICIT, start_tls=s.tls is TlsMode.STARTTLS,
                tls_context=self._tls_context(), username=s.username or None, password=s.password or None,
            )
        try:
            await smtp.connect()
        except BaseException:
            smtp.close()
            if smtp.sock is not None:
                smtp.sock.close()
            raise
        return smtp

    async def _socket(self) -> socket.socket:
        """A TCP connection to (host, port), made without blocking the loop."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.settings.host, self.settings.port, type=socket.SOCK_STREAM)
        error: OSError | None = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, address), self.settings.timeout)
                return sock
            except OSError as exc:  # TimeoutError included
                sock.close()
                error = exc
        raise error or OSError(f"{self.settings.host} has no address")

    async def close(self) -> None:
        if self.smtp is not None:
            try:
                await self.smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                self.smtp.close()
            self.smtp = None

    async def submit(self, mail_from: str, rcpt: str, data: bytes) -> Result:
        """Submit one message to one recipient and classify what the MTA answered."""
        try:
            if self.smtp is None or not self.smtp.is_connected:
                self.smtp = await self._connect()
            if self.smtp.supports_extension("pipelining") and _plain(mail_from) and _plain(rcpt):
                return await self._pipelined(self.smtp, mail_from, rcpt, data)
            _errors, message = await self.smtp.sendmail(mail_from, [rcpt], data)
            return Result(Outcome.ACCEPTED, _reply(250, message))
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            await self._reset()
            return Result(classify_rcpt_refusal(refused.code, refused.message), _reply(refused.code, refused.message))
        except aiosmtplib.SMTPSenderRefused as exc:
            await self._reset()
            outcome = Outcome.PAUSE if 500 <= exc.code < 600 else Outcome.RETRY
            return Result(outcome, _reply(exc.code, exc.message))
        except aiosmtplib.SMTPDataError as exc:
            await self._reset()
            outcome = Outcome.FAILED if 500 <= exc.code < 600 else Outcome.RETRY
            return Result(outcome, _reply(exc.code, exc.message))
        except aiosmtplib.SMTPAuthenticationError as exc:
            await self._drop()
            return Result(Outcome.PAUSE, _reply(exc.code, exc.message))
        except aiosmtplib.SMTPResponseException as exc:
            await self._drop()
            return Result(Outcome.RETRY, _reply(exc.code, exc.message))
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self._drop()
            return Result(Outcome.RETRY, f"connection: {type(exc).__name__}: {exc}"[:512])

    async def _pipelined(self, smtp: aiosmtplib.SMTP, mail_from: str, rcpt: str, data: bytes) -> Result:
        """MAIL, RCPT and the message in one write (our listeners offer PIPELINING and CHUNKING): no round
        trip per command, and aiosmtplib does not parse the addresses again on every message."""
        replies = await pipeline.transaction(smtp, b"FROM:<" + mail_from.encode() + b">",
                                             [b"TO:<" + rcpt.encode() + b">"], data)
        if replies.mail.code != 250:
            result = Result(Outcome.PAUSE if 500 <= replies.mail.code < 600 else Outcome.RETRY,
                            _reply(replies.mail.code, replies.mail.message))
        elif not replies.accepted(0):
            refused = replies.rcpts[0]
            result = Result(classify_rcpt_refusal(refused.code, refused.message), _reply(refused.code, refused.message))
        elif replies.data.code == 250:
            return Result(Outcome.ACCEPTED, _reply(250, replies.data.message))
        else:
            code = replies.data.code
            result = Result(Outcome.FAILED if 500 <= code < 600 else Outcome.RETRY, _reply(code, replies.data.message))
        if smtp.is_connected:
            await self._reset()
        else:
            self.smtp = None
        return result

    async def _reset(self) -> None:
        """After a refused transaction: RSET, or a new session when the connection is gone."""
        if self.smtp is None:
            return
        try:
            await self.smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            await self._drop()

    async def _drop(self) -> None:
        if self.smtp is not None:
            self.smtp.close()
            self.smtp = None
