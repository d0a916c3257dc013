"""SMTP listeners on aiosmtpd: submission (587), implicit TLS (465) and inbound bounces/FBL (25).

aiosmtpd does the protocol; the policy lives in :mod:`smtpinfra_mta.policy` and the handler below
only connects the two: authenticate, check envelope and headers, sign, spool durably, then answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import ssl
import time
import warnings
from email.utils import formatdate
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session

from smtpinfra_mta import policy
from smtpinfra_mta.appview import SmtpApp
from smtpinfra_mta.campaign_contract import FEEDBACK_ID_HEADER
from smtpinfra_mta.headers import HeaderError, Headers, header_section_size, parse_headers
from smtpinfra_mta.outcomes import campaign_of
from smtpinfra_mta.protocol import COMMAND_CALL_LIMITS, NULL_SENDER, ListenerKind, MtaSMTP
from smtpinfra_mta.quota import Reservation
from smtpinfra_mta.spool import Kind, SpooledMessage, SpoolError, new_message_id
from smtpinfra_mta.tenants import domain_of

log = logging.getLogger(__name__)
MAX_AUTH_FAILURES = 3
RELAY_TENANT = "_relay"  # accounting name of mail accepted for a relay domain (no tenant sent it)
INLINE_HEADER_BYTES = 32 * 1024  # header sections up to this size are parsed on the event loop
HEADER_PARSE_TIMEOUT = 10.0


def _tls_ok(server: SMTP) -> bool:
    return bool(server.transport is not None and server.transport.get_extra_info("ssl_object") is not None)


class SmtpHandler:
    """Policy hooks for one listener kind."""

    def __init__(self, app: SmtpApp, kind: ListenerKind) -> None:
        self.app = app
        self.kind = kind

    @property
    def authenticated_listener(self) -> bool:
        return self.kind != "inbound"

    # ------------------------------------------------------------------ EHLO / AUTH

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        extra = ["250-PIPELINING", "250-CHUNKING", "250-ENHANCEDSTATUSCODES"]
        rest = responses[1:]
        if not self.authenticated_listener:
            rest = [r for r in rest if not r[4:].upper().startswith("AUTH")]
        return [responses[0], *extra, *rest]

    async def _login(self, server: SMTP, session: Session, username: bytes, password: bytes) -> AuthResult:
        if not _tls_ok(server):  # defence in depth: aiosmtpd already refuses AUTH before TLS
            return AuthResult(success=False, handled=False, message="538 5.7.11 Encryption required")
        failures = getattr(session, "auth_failures", 0)
        try:
            user = username.decode("utf-8")
        except UnicodeDecodeError:
            user = ""
        tenant = await self.app.tenants.authenticate(user, password) if user else None
        if tenant is None:
            session.auth_failures = failures + 1  # type: ignore[attr-defined]
            self.app.metrics.auth_failures.labels(listener=self.kind).inc()
            log.warning("auth failed", extra={"listener": self.kind, "peer": _peer(session)})
            if failures + 1 >= MAX_AUTH_FAILURES:
                await server.push("421 4.7.0 Too many authentication failures")
                if server.transport is not None:
                    server.transport.close()
                return AuthResult(success=False, handled=True)
            await asyncio.sleep(0.2 * (failures + 1))  # slow down guessing
            return AuthResult(success=False, handled=False, message="535 5.7.8 Authentication credentials invalid")
        log.info("auth ok", extra={"listener": self.kind, "tenant": tenant.name, "peer": _peer(session)})
        return AuthResult(success=True, auth_data=tenant.name)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await server.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        assert server.session is not None
        return await self._login(server, server.session, parts[1], parts[2])

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            username = await server.challenge_auth("Username:")
            if username is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                username = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        assert server.session is not None
        return await self._login(server, server.session, username, password)

    # ------------------------------------------------------------------ envelope

    def _reject(self, reason: str, reply: str) -> str:
        self.app.metrics.rejected.labels(listener=self.kind, reason=reason).inc()
        return reply

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if self.app.draining:
            return "421 4.3.2 Service shutting down"
        if self.authenticated_listener:
            tenant = self.app.tenants.tenant(str(session.auth_data)) if session.authenticated else None
            if tenant is None:
                return self._reject("auth", "530 5.7.0 Authentication required")
            refusal = policy.check_mail_from(address, tenant)
            if refusal is not None:
                log.info("mail from refused", extra={"tenant": tenant.name, "reply": refusal})
                return self._reject("sender", refusal)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if self.authenticated_listener and session.authenticated:
            refusal = policy.check_submission_rcpt(address, len(envelope.rcpt_tos),
                                                   self.app.cfg.limits.max_recipients)
            if refusal is not None:
                return self._reject("recipient", refusal)
            tenant = self.app.tenants.tenant(str(session.auth_data))
            if tenant is not None:
                refusal = self.app.quota_refusal(tenant, len(envelope.rcpt_tos) + 1)
                if refusal is not None:
                    return self._reject("quota", refusal)
        else:
            # Unauthenticated: only our own bounce/FBL domains and the relay domains, on the inbound listener.
            inbound = self.app.cfg.listeners.inbound
            relay = [r.domain for r in inbound.relay_domains]
            refusal = policy.check_inbound_rcpt(address, [*inbound.domains, *relay] if self.kind == "inbound" else [])
            if refusal is None and len(envelope.rcpt_tos) >= self.app.cfg.limits.max_recipients:
                refusal = "452 4.5.3 Too many recipients"
            if refusal is None:
                refusal = self._one_route_per_transaction(envelope, address)
            if refusal is not None:
                return self._reject("relay", refusal)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    def _relay_pool(self, address: str) -> str | None:
        """The pool forwarding mail for ``address`` when it is in a relay domain, else None (a report)."""
        rd = self.app.cfg.relay_domain(domain_of(address))
        return rd.pool if rd is not None else None

    def _one_route_per_transaction(self, envelope: Envelope, address: str) -> str | None:
        """Reports and relayed mail are spooled differently, so one transaction carries one kind (and pool).

        452 makes the client send the remaining recipients in another transaction (RFC 5321 4.5.3.1.10).
        """
        if not envelope.rcpt_tos:
            return None
        if self._relay_pool(address) != self._relay_pool(envelope.rcpt_tos[0]):
            return "452 4.5.3 Send recipients of this domain in a separate transaction"
        return None

    # ------------------------------------------------------------------ DATA

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content: bytes = envelope.original_content or b""
        mail_from = "" if envelope.mail_from == NULL_SENDER else str(envelope.mail_from)
        rcpts = list(envelope.rcpt_tos)
        kind: Kind
        headers: Headers | None = None
        reservation: Reservation | None = None
        from_domain = ""
        if self.authenticated_listener:
            try:
                headers = await self._parse_headers(content)
            except HeaderError as exc:
                return self._reject("header", exc.reply)
            if headers.count("Received") > policy.MAX_RECEIVED_HEADERS:
                return self._reject("loop", policy.LOOP_REPLY)
            tenant = self.app.tenants.tenant(str(session.auth_data))
            if tenant is None:
                return self._reject("auth", "530 5.7.0 Authentication required")
            if tenant.suspended:  # suspended by a reload during the transaction
                return self._reject("suspended", policy.suspended_reply(tenant))
            refusal, from_domain = policy.check_identity(headers, tenant)
            if refusal is not None:
                return self._reject("header_from", refusal)
            refusal, reservation = await self.app.reserve_quota(tenant, len(rcpts))
            if refusal is not None:
                return self._reject("quota", refusal)
            tenant_name, pool, kind = tenant.name, tenant.pool, "submission"
        else:
            loop_refusal = policy.check_loop(content)
            if loop_refusal is not None:
                return self._reject("loop", loop_refusal)
            relay_pool = self._relay_pool(rcpts[0]) if rcpts else None
            if relay_pool is not None:
                tenant_name, pool, kind = RELAY_TENANT, relay_pool, "relay"
            else:
                tenant_name, pool, kind = "_inbound", "", "inbound"
        try:
            content = self._received_header(session, envelope, tenant_name if self.authenticated_listener else None) \
                + content
            if from_domain:
                content = await self.app.sign(content, from_domain)
            ikey = _idempotency_key(headers, mail_from, rcpts) if headers is not None else None
            msg = SpooledMessage(
                id=new_message_id(), tenant=tenant_name, pool=pool, mail_from=mail_from, rcpts=rcpts,
                received_at=time.time(), kind=kind,
                idempotency_key=ikey, client=_peer(session), listener=self.kind,
                campaign=_campaign(headers, tenant_name) if headers is not None else None,
            )
            try:
                msg_id, duplicate = await self.app.spool.commit(msg, content)
            except SpoolError:
                return "451 4.3.0 Temporary local problem (spool), please retry"
        except BaseException:
            if reservation is not None:
                await asyncio.shield(reservation.release())
            raise
        if duplicate:
            if reservation is not None:
                await reservation.release()  # counted when it was first accepted
            log.info("duplicate submission", extra={"tenant": tenant_name, "id": msg_id})
            return f"250 2.0.0 OK already queued as {msg_id}"
        if reservation is not None:
            reservation.keep()
        return f"250 2.0.0 OK queued as {msg_id}"

    async def _parse_headers(self, content: bytes) -> Headers:
        """The header section, parsed once: inline when small, in a worker thread with a deadline when large.

        The parse is linear and bounded, so even the largest allowed section costs milliseconds; the
        thread only keeps such a message from holding every other session's event loop meanwhile.
        """
        limits = self.app.header_limits
        if header_section_size(content, INLINE_HEADER_BYTES) <= INLINE_HEADER_BYTES:
            return parse_headers(content, limits)
        try:
            return await asyncio.wait_for(asyncio.to_thread(parse_headers, content, limits), HEADER_PARSE_TIMEOUT)
        except TimeoutError:
            raise HeaderError("451 4.3.0 Header parsing took too long, please retry later") from None

    def _received_header(self, session: Session, envelope: Envelope, tenant: str | None) -> bytes:
        peer = _peer(session)
        helo = (session.host_name or "unknown").replace("\r", "").replace("\n", "")[:200]
        proto = "ESMTP"
        if _tls_ok_session(session):
            proto += "S"
        if session.authenticated:
            proto += "A"
        auth = f" (tenant {tenant})" if tenant else ""
        return (
            f"Received: from {helo} ([{peer}]){auth}\r\n\tby {self.app.cfg.hostname} (smtp-infra) with {proto};\r\n"
            f"\t{_rfc5322_now()}\r\n"
        ).encode("utf-8", "replace")

    async def handle_PROXY(self, server: SMTP, session: Session, envelope: Envelope, proxy_data: Any) -> bool:
        # The original client address replaces the load balancer's in logs, Received headers and the
        # per-address connection budget (which could not be checked before this header arrived).
        if not (proxy_data and getattr(proxy_data, "valid", True)):
            return False
        src = getattr(proxy_data, "src_addr", None)
        if src is not None and isinstance(server, MtaSMTP):
            refusal = self.app.connections.add_ip(self.kind, str(src), server.listener_limits)
            if refusal is not None:
                self.app.metrics.rejected.labels(listener=self.kind, reason="connections").inc()
                return False
            server.counted_ip = str(src)
        return True


def _campaign(headers: Headers, tenant: str) -> str | None:
    """The tenant's own campaign named by the message's Feedback-ID, or None."""
    raw = headers.first(FEEDBACK_ID_HEADER)
    return campaign_of(raw.decode("utf-8", "replace"), tenant) if raw else None


def _idempotency_key(headers: Headers, mail_from: str, rcpts: list[str]) -> str | None:
    """A digest of the client's X-Idempotency-Key (or Message-ID), sender and recipients; None without one."""
    key = headers.first("X-Idempotency-Key") or headers.first("Message-ID")
    if not key:
        return None
    h = hashlib.sha256(b"\0".join([key.strip(), mail_from.encode("utf-8", "replace"),
                                    *sorted(r.encode("utf-8", "replace") for r in rcpts)]))
    return h.hexdigest()


_date_cache: tuple[int, str] = (0, "")


def _rfc5322_now() -> str:
    """The current date for a Received header, formatted once per second rather than once per message."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def _tls_ok_session(session: Session) -> bool:
    return session.ssl is not None


def _peer(session: Session) -> str:
    proxy = getattr(session, "proxy_data", None)
    if proxy is not None and getattr(proxy, "src_addr", None) is not None:
        return str(proxy.src_addr)
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


def make_protocol_factory(app: SmtpApp, kind: ListenerKind, tls_ctx: ssl.SSLContext | None) -> Any:
    """A factory for ``loop.create_server`` building one aiosmtpd protocol per connection."""
    cfg = app.cfg
    listener = getattr(cfg.listeners, kind)
    handler = SmtpHandler(app, kind)
    common: dict[str, Any] = {
        "hostname": cfg.hostname,
        "ident": "smtp-infra ESMTP",
        "data_size_limit": cfg.limits.max_message_size,
        "enable_SMTPUTF8": True,
        "decode_data": False,
        "timeout": getattr(cfg.limits, kind).idle_timeout or cfg.limits.command_timeout,
        "command_call_limit": COMMAND_CALL_LIMITS,
        "proxy_protocol_timeout": cfg.limits.proxy_protocol_timeout if listener.proxy_protocol else None,
    }
    if kind == "submission":
        common.update(tls_context=tls_ctx, require_starttls=True, auth_required=True, auth_require_tls=True)
    elif kind == "implicit_tls":
        # TLS is on the transport from the first byte; aiosmtpd cannot see that, so its own
        # "AUTH needs TLS" check is replaced by the handler's check of the transport.
        common.update(tls_context=None, require_starttls=False, auth_required=True, auth_require_tls=False)
    else:
        common.update(tls_context=tls_ctx if cfg.listeners.inbound.starttls else None, require_starttls=False,
                      auth_required=False, auth_require_tls=True, auth_exclude_mechanism=["PLAIN", "LOGIN"])

    def factory() -> MtaSMTP:
        if kind != "implicit_tls":
            return MtaSMTP(handler, app=app, kind=kind, **common)
        with warnings.catch_warnings():
            # "AUTH without TLS" warning: on 465 TLS is on the transport, which aiosmtpd cannot see.
            warnings.simplefilter("ignore", UserWarning)
            return MtaSMTP(handler, app=app, kind=kind, **common)

    return factory
