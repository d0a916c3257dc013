"""Helpers for the hostile-input tests of the inbound report path: crafted reports, an SMTP sender,
a probe of the MTA event loop's latency and a recorder of exceptions that escaped on that loop."""

from __future__ import annotations

import asyncio
import smtplib
from dataclasses import dataclass, field
from typing import Any

from .conftest import MTA_ADDR, RunningMta

RP = "bounces.mta.test"


def quadratic_content_type(size: int) -> bytes:
    """A report whose Content-Type has an unterminated quote followed by folded ';' (quadratic to parse)."""
    folds = "\r\n ;" * (size // 4)
    return (f"From: MAILER-DAEMON@mx.example.test\r\nTo: <x@{RP}>\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="B1{folds}\r\n\r\n'
            "--B1\r\nContent-Type: text/plain\r\n\r\nx\r\n--B1--\r\n").encode()


def nested_return_path(depth: int) -> bytes:
    """A DSN quoting headers whose Return-Path nests ``depth`` comments (the address parser recurses)."""
    return (f"From: MAILER-DAEMON@mx.example.test\r\nTo: <x@{RP}>\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B1"\r\n\r\n'
            "--B1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.test\r\n\r\n"
            "Final-Recipient: rfc822; someone@example.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
            "--B1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"Return-Path: {_folded('(' * depth)}x{_folded(')' * depth)} <a@b.test>\r\nFrom: a@b.test\r\n\r\n"
            "--B1--\r\n").encode()


def _folded(text: str, width: int = 400) -> str:
    """``text`` folded onto continuation lines (SMTP refuses lines over 1000 octets)."""
    return "\r\n ".join(text[i:i + width] for i in range(0, len(text), width))


def send_report(mta: RunningMta, rcpt: str, content: bytes, mail_from: str = "") -> str:
    """Send ``content`` to port 25 as a remote MTA would; returns the final reply ("250 ...")."""
    with smtplib.SMTP(MTA_ADDR, mta.inbound_port, local_hostname="mx.example.test", timeout=60) as s:
        s.ehlo()
        s.mail(mail_from)
        s.send(f"RCPT TO:<{rcpt}>\r\n".encode())  # raw bytes: smtplib would refuse a non-ASCII address
        code, text = s.getreply()
        if code != 250:
            return f"{code} {text.decode(errors='replace')}"
        code, text = s.data(content)
        return f"{code} {text.decode(errors='replace')}"


@dataclass
class LoopProbe:
    """Measures how late a 50 ms ticker on the MTA's event loop wakes up (the loop's latency) and records
    exceptions the loop's handler receives (tasks that died with an unhandled exception)."""

    mta: RunningMta
    max_lag: float = 0.0
    errors: list[str] = field(default_factory=list)
    _task: Any = None

    def start(self) -> LoopProbe:
        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            self.errors.append(f"{context.get('message')}: {context.get('exception')!r}")
            loop.default_exception_handler(context)

        async def tick() -> None:
            loop = asyncio.get_running_loop()
            while True:
                t = loop.time()
                await asyncio.sleep(0.05)
                self.max_lag = max(self.max_lag, loop.time() - t - 0.05)

        async def begin() -> None:
            asyncio.get_running_loop().set_exception_handler(handler)
            self._task = asyncio.create_task(tick())

        self.mta.run(begin())
        return self

    def stop(self) -> None:
        async def end() -> None:
            self._task.cancel()

        self.mta.run(end())
