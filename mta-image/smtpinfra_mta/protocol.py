"""aiosmtpd's SMTP protocol as the MTA runs it: address rules, connection budgets, deadlines, DATA memory.

The policy hooks live in :mod:`smtpinfra_mta.server`; this module is the protocol object of one
connection: who may connect (the listener's budgets), how long a session may last, how DATA is read
(bytes counted against the process-wide ceiling), and aiosmtpd's per-connection costs cut down.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from typing import Any, AnyStr, Literal

import aiosmtpd.smtp as _aiosmtpd_smtp
from aiosmtpd.smtp import MISSING, SMTP

from smtpinfra_mta.appview import SmtpApp
from smtpinfra_mta.config import ListenerLimits
from smtpinfra_mta.datastream import DataDecoder, LineMeter, parse_bdat
from smtpinfra_mta.limits import MemoryBudget

ListenerKind = Literal["submission", "implicit_tls", "inbound"]
NULL_SENDER = "<>"  # aiosmtpd treats an empty MAIL FROM as "no MAIL yet", so we carry a marker


# ``<local@domain> PARAMS`` with a dot-atom local part and a plain domain: nearly every address sent. These
# are parsed with one regex; anything else (quoted local parts, comments, literals) goes to aiosmtpd's full
# RFC 5322 parser, which is correct but costs ~10 % of the CPU of a one-message session.
_SIMPLE_ADDR_RE = re.compile(
    r"\s*<([A-Za-z0-9!#$&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$&'*+/=?^_`{|}~-]+)*@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)>(.*)",
    re.DOTALL,
)


class _MemberCache:
    """Stands in for :mod:`inspect` inside aiosmtpd, whose ``SMTP.__init__`` runs ``inspect.getmembers`` and
    ``inspect.signature`` on the protocol and the handler for every connection (a sixth of the CPU of a
    one-message session). aiosmtpd only keeps the ``auth_*`` members, so only their names are cached per
    class (signatures per function); the members returned are still bound to the object asked about.
    The AUTH tests fail if a future aiosmtpd looks for other members this way."""

    def __init__(self) -> None:
        self._names: dict[type, list[str]] = {}
        self._sigs: dict[Any, inspect.Signature] = {}

    def getmembers(self, obj: Any) -> list[tuple[str, Any]]:
        names = self._names.get(type(obj))
        if names is None:
            names = self._names[type(obj)] = [n for n, _ in inspect.getmembers(obj) if n.startswith("auth_")]
        return [(n, getattr(obj, n)) for n in names]

    def signature(self, fn: Any) -> inspect.Signature:
        key = getattr(fn, "__func__", fn)
        sig = self._sigs.get(key)
        if sig is None:
            sig = self._sigs[key] = inspect.signature(fn)
        return sig


_aiosmtpd_smtp.inspect = _MemberCache()  # type: ignore[attr-defined, assignment]

_HOOK_NAMES: dict[type, list[str]] = {}


def _hook_names(obj: Any) -> list[str]:
    """Replaces ``dir()`` inside aiosmtpd, which lists the ``smtp_*`` commands and ``handle_*`` hooks of the
    protocol and the handler on every connection. Those come from the classes, so they are listed once per
    class; no other name is ever looked up this way there."""
    names = _HOOK_NAMES.get(type(obj))
    if names is None:
        names = _HOOK_NAMES[type(obj)] = [n for n in dir(obj) if n.startswith(("smtp_", "handle_"))]
    return names


_aiosmtpd_smtp.dir = _hook_names  # type: ignore[attr-defined]


_READ_ALL = 1 << 30  # StreamReader.read(n) returns what is buffered, at most n: take it all
_STATE_REPLIES = {"size": "552 5.3.4 Error: Too much mail data",
                  "long": "500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)",
                  "memory": "452 4.3.1 Insufficient system resources, try again later"}

COMMAND_CALL_LIMITS = {"NOOP": 100, "HELP": 10, "VRFY": 10, "EXPN": 10, "*": 1_000_000}
"""Per-session budget of commands that do nothing for mail; the session deadline bounds everything else."""


class MtaSMTP(SMTP):
    """aiosmtpd's protocol with our address rules (null sender allowed, source routes refused), the
    listener's connection budget, a session deadline and the shared ceiling on DATA bytes in memory."""

    def __init__(self, *args: Any, app: SmtpApp, kind: ListenerKind = "submission", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._app = app
        self._kind = kind
        self._held: list[bytes] = []
        self.counted_ip: str | None = None
        self._busy = False
        self._expire_when_idle = False
        self._bdat: _Chunks | None = None  # the message being received with BDAT, between its chunks

    @property
    def listener_limits(self) -> ListenerLimits:
        limits: ListenerLimits = getattr(self._app.cfg.limits, self._kind)
        return limits

    async def push(self, status: AnyStr) -> None:
        """Send a multi-line reply in one write, as Postfix does.

        aiosmtpd writes every line of a reply (EHLO's ``250-...`` lines) separately. Clients that read one
        segment per reply (nmap's smtp library is one) then take the rest of the EHLO reply as the answer to
        their next command, and every later reply is off by one: nmap's smtp-open-relay script reports an
        open relay because the ``250`` to MAIL arrives where it expects the answer to RCPT.
        """
        line = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") if isinstance(status, str) else status
        if (len(line) > 3 and line[3:4] == b"-") or (line.startswith(b"250 ") and self._more_commands_buffered()):
            self._held.append(line)
            return
        if self._held:
            line = b"\r\n".join([*self._held, line])
            self._held.clear()
        await super().push(line)

    def _more_commands_buffered(self) -> bool:
        """Whether the client pipelined another complete command behind this one (RFC 2920 section 3.2).

        Its reply goes out with the next one, as Postfix's smtpd does, so a pipelined MAIL, RCPT and
        BDAT get their three replies in one write (one TLS record) instead of three. Only a 250 is
        held, and only while a complete line waits: that command is answered next, so nothing is held
        while the client waits; every other reply (354, 221, 4xx, 5xx: those after which a session may
        close) goes out at once with whatever was held, as does the 421 of an expired session.
        """
        buffered = getattr(self._reader, "_buffer", None)  # asyncio.StreamReader's read-ahead
        return isinstance(buffered, bytearray) and b"\n" in buffered

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        stripped = arg.strip()
        if stripped.startswith("<>"):
            return NULL_SENDER, stripped[2:]
        if stripped.startswith("<@"):
            return None, None  # RFC 5321 source route: a relay trick; refuse as malformed (553 5.1.3)
        m = _SIMPLE_ADDR_RE.fullmatch(arg)
        if m is not None and (not self.local_part_limit or len(m.group(1).rpartition("@")[0]) <= self.local_part_limit):
            return m.group(1), m.group(2)
        addr, rest = super()._getaddr(arg)
        if addr is not None and ("\r" in addr or "\n" in addr or "\0" in addr):
            return None, None
        return addr, rest

    async def _handle_client(self) -> None:
        if self._app.draining:
            await self._refuse("421 4.3.2 Service shutting down, try another server")
            return
        proxied = self._proxy_timeout is not None  # the client's address is known after the PROXY header
        peer = self.session.peer if self.session is not None else None
        ip = str(peer[0]) if isinstance(peer, tuple) and peer and not proxied else None
        if self._app.sessions >= self._app.cfg.limits.max_sessions:
            await self._refuse("421 4.3.2 Too many connections, try later")
            return
        refusal = self._app.connections.open(self._kind, ip, self.listener_limits)
        if refusal is not None:
            self._app.metrics.rejected.labels(listener=self._kind, reason="connections").inc()
            await self._refuse(refusal)
            return
        self.counted_ip = ip
        deadline = self.loop.call_later(self.listener_limits.session_time_limit, self._session_expired)
        self._app.session_opened()
        try:
            await super()._handle_client()
        finally:
            deadline.cancel()
            self._app.connections.close(self._kind, self.counted_ip)
            self._app.session_closed()

    async def _refuse(self, reply: str) -> None:
        await self.push(reply)
        if self.transport is not None:
            self.transport.close()

    def _session_expired(self) -> None:
        """The session deadline: close now, or right after the message being received is answered."""
        if self._busy:
            self._expire_when_idle = True
            return
        self._expire()

    def _expire(self) -> None:
        if isinstance(self.transport, asyncio.WriteTransport):
            held, self._held = self._held, []
            self.transport.write(b"".join(line + b"\r\n" for line in held)
                                 + b"421 4.4.2 Session time limit reached, closing connection\r\n")
        if self.transport is not None:
            self.transport.close()

    @_aiosmtpd_smtp.syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA read in large chunks (:mod:`smtpinfra_mta.datastream`), every byte held counted against the
        process-wide memory ceiling.

        Beyond the ceiling the message is discarded as it arrives and refused with 452 4.3.1 (the client
        retries later), so many large concurrent messages cannot grow the process until it is killed.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if self._bdat is not None:
            await self.push("503 5.5.1 Error: BDAT transfer in progress")
            return
        budget = self._app.data_memory
        held = 0
        self._busy = True
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            decoder = DataDecoder(self.line_length_limit)
            data: list[bytes] = []
            size, limit, state = 0, self.data_size_limit, ""
            while True:
                # Everything buffered at once: the reader's buffer is left empty, so bytes after the end
                # marker (pipelined commands) can be handed back to it in order.
                chunk = await self._reader.read(_READ_ALL)
                if not chunk:
                    return  # the client went away; nothing was acknowledged
                fed = decoder.feed(chunk)
                size += fed.raw_size
                if not state:
                    if limit and size > limit:
                        state = "size"
                    elif decoder.too_long:
                        state = "long"
                    elif not budget.take(len(fed.data)):
                        state = "memory"
                    else:
                        held += len(fed.data)
                        data.append(fed.data)
                    if state:
                        data.clear()
                        budget.give(held)
                        held = 0
                if fed.done:
                    if fed.rest and not self._reader.at_eof():
                        self._reader.feed_data(fed.rest)
                    break
            await self._finish_message(state, data)
        finally:
            budget.give(held)
            self._busy = False
            if self._expire_when_idle:
                self._expire()

    def _create_envelope(self) -> _aiosmtpd_smtp.Envelope:
        """Every new transaction (RSET, MAIL after a message, a refused chunk) drops a BDAT message begun."""
        self._drop_bdat()
        return super()._create_envelope()

    def _drop_bdat(self) -> None:
        chunks = getattr(self, "_bdat", None)
        if chunks is not None:
            self._app.data_memory.give(chunks.held)
            self._bdat = None

    def connection_lost(self, error: Exception | None) -> None:
        self._drop_bdat()
        super().connection_lost(error)

    @_aiosmtpd_smtp.syntax("BDAT chunk-size [LAST]")
    async def smtp_BDAT(self, arg: str) -> None:
        """CHUNKING (RFC 3030): the chunk's bytes are always read, even when it is refused, so the session
        stays in step; size, line length and the memory ceiling apply as for DATA; LAST ends the message."""
        parsed = parse_bdat(arg)
        if parsed is None:
            # The length of what follows is unknown, so nothing after it can be trusted as a command.
            await self._refuse("501 5.5.4 Syntax: BDAT chunk-size [LAST]; closing connection")
            return
        size, last = parsed
        refusal = None
        if not self.session or not self.session.host_name:
            refusal = "503 5.5.1 Error: send HELO first"
        elif self._auth_required and not self.session.authenticated:
            refusal = "530 5.7.0 Authentication required"
        elif self.envelope is None or not self.envelope.rcpt_tos:
            refusal = "503 5.5.1 Error: need RCPT command"
        if refusal is None and self._bdat is None:
            self._bdat = _Chunks(LineMeter(self.line_length_limit))
        chunks = self._bdat
        self._busy = True
        try:
            remaining = size
            while remaining:
                piece = await self._reader.read(min(remaining, _READ_ALL))
                if not piece:
                    return  # the client went away; nothing was acknowledged
                remaining -= len(piece)
                if refusal is None and chunks is not None and not chunks.state:
                    chunks.add(piece, self.data_size_limit, self._app.data_memory)
            if refusal is not None:
                await self.push(refusal)
                return
            assert chunks is not None
            if not last and not chunks.state:
                await self.push(f"250 2.0.0 {size} octets received")
                return
            data, state = chunks.data, chunks.state
            self._bdat = None
            try:
                await self._finish_message(state, data)
            finally:
                self._app.data_memory.give(chunks.held)
        finally:
            self._busy = False
            if self._expire_when_idle:
                self._expire()

    async def _finish_message(self, state: str, data: list[bytes]) -> None:
        """Answer a received message: the refusal its reading ended in, or the handler's verdict."""
        assert self.envelope is not None
        if state:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            if state == "memory":
                self._app.metrics.rejected.labels(listener=self._kind, reason="memory").inc()
            await self.push(_STATE_REPLIES[state])
            return
        content = data[0] if len(data) == 1 else b"".join(data)
        data.clear()
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)


class _Chunks:
    """A message arriving in BDAT chunks: the bytes kept, their size, and why it is refused (if it is)."""

    def __init__(self, lines: LineMeter) -> None:
        self.data: list[bytes] = []
        self.size = 0
        self.held = 0
        self.state = ""
        self._lines = lines

    def add(self, piece: bytes, limit: int | None, budget: MemoryBudget) -> None:
        self.size += len(piece)
        self._lines.feed(piece)
        if limit and self.size > limit:
            self.state = "size"
        elif self._lines.too_long:
            self.state = "long"
        elif not budget.take(len(piece)):
            self.state = "memory"
        else:
            self.held += len(piece)
            self.data.append(piece)
            return
        self.data.clear()
        budget.give(self.held)
        self.held = 0
