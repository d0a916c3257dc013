"""Handing queued mail to a peer replica of the same server: how mail moves to another pod's address.

Each replica owns one address of each pool, so mail that may not leave from this replica's address
(quarantined or paused with ``move_when_blocked``, or over a warming address's cap when the pool overflows
to warm addresses) can only leave from another replica's. The delivering process POSTs the message to the
peer's delivery port (``/handoff``, the server's hand-off bearer token); the peer commits it durably to
its own spool before it answers 200, and only then is it marked done here. A crash between the two sends
the hand-off again, and the peer's idempotency key (origin id and recipients) drops the repeat. Mail
taken over keeps its original arrival time (the queue lifetime still counts from it) and is never handed
on again, so two blocked replicas cannot pass it back and forth.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from smtpinfra_mta.config import MtaConfig, Peer, Pool
from smtpinfra_mta.metrics import HANDOFF_PATH, Handoff, Metrics, Response
from smtpinfra_mta.spool import Spool, SpooledMessage, new_message_id

ENVELOPE_LIMIT = 64 * 1024
"""Bytes of the JSON envelope line that precedes the message in a hand-off request."""
CONTENT_TYPE = "application/x-smtpinfra-handoff"
_ORIGIN_RE = re.compile(r"^[0-9a-f]{1,64}$")
_KINDS = ("submission", "dsn")


class HandoffError(Exception):
    """The peer did not take the message (unreachable, refused, or no token): it stays queued here."""


def encode(msg: SpooledMessage, rcpts: list[str], content: bytes) -> bytes:
    """The request body: one JSON envelope line, then the message exactly as spooled (signed already)."""
    envelope = {"origin": msg.id, "tenant": msg.tenant, "pool": msg.pool, "mail_from": msg.mail_from,
                "rcpts": rcpts, "received_at": msg.received_at, "kind": msg.kind, "campaign": msg.campaign}
    return json.dumps(envelope, separators=(",", ":")).encode() + b"\n" + content


def _text(value: Any, name: str, limit: int, *, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > limit or (not value and not empty) or "\r" in value \
            or "\n" in value:
        raise ValueError(f"envelope field {name!r} is missing or malformed")
    return value


def decode(body: bytes, max_rcpts: int) -> tuple[SpooledMessage, bytes]:
    """The message a peer handed over, validated field by field (the token proves who sent it, not what)."""
    head, sep, content = body.partition(b"\n")
    if not sep or len(head) > ENVELOPE_LIMIT:
        raise ValueError("the body must start with a JSON envelope line")
    try:
        d = json.loads(head)
    except ValueError as exc:
        raise ValueError(f"envelope is not JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise ValueError("envelope must be an object")
    rcpts = d.get("rcpts")
    if not isinstance(rcpts, list) or not 1 <= len(rcpts) <= max_rcpts:
        raise ValueError(f"envelope field 'rcpts' must list 1 to {max_rcpts} recipients")
    received_at = d.get("received_at")
    if not isinstance(received_at, int | float) or isinstance(received_at, bool):
        raise ValueError("envelope field 'received_at' must be a number")
    campaign = d.get("campaign")
    kind = d.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"envelope field 'kind' must be one of {', '.join(_KINDS)}")
    origin = _text(d.get("origin"), "origin", 64)
    if not _ORIGIN_RE.match(origin):
        raise ValueError("envelope field 'origin' must be a queue id")
    msg = SpooledMessage(
        id=new_message_id(), tenant=_text(d.get("tenant"), "tenant", 253), pool=_text(d.get("pool"), "pool", 63),
        mail_from=_text(d.get("mail_from"), "mail_from", 998, empty=True),
        rcpts=[_text(r, "rcpts", 998) for r in rcpts], received_at=float(received_at), kind=kind,
        campaign=None if campaign is None else _text(campaign, "campaign", 512), handed_off=True,
        listener="handoff")
    msg.idempotency_key = handoff_key(origin, msg.rcpts)
    return msg, content


def handoff_key(origin: str, rcpts: list[str]) -> str:
    """One key per (origin message, recipients): a repeated hand-off of the same part is a duplicate."""
    digest = hashlib.sha256("\n".join(sorted(rcpts)).encode()).hexdigest()[:24]
    return f"handoff:{origin}:{digest}"


def choose_peer(pool: Pool, warming: Callable[[str], bool], at_cap: Callable[[str], bool],
                turn: int) -> Peer | None:
    """The peer that should take mail this replica cannot send now, or None (it waits here) (pure).

    No sendable address here (all quarantined or paused): any peer, warm ones first, when the pool
    moves blocked mail. Sendable addresses all warming and at their caps, and the pool overflows to warm
    addresses: a warm peer. Anything else (an automation pause, a Wait pool) waits here.
    """
    if not pool.peers:
        return None
    sendable = [s.address for s in pool.source_ips if not s.quarantined and not s.paused]
    if not sendable:
        if not pool.move_when_blocked:
            return None
        candidates = [p for p in pool.peers if p.warm] or pool.peers
    elif pool.overflow == "warm-addresses" and all(warming(a) and at_cap(a) for a in sendable):
        candidates = [p for p in pool.peers if p.warm]
    else:
        return None
    return candidates[turn % len(candidates)] if candidates else None


class HandoffClient:
    """Sends one message to a peer's delivery process; the token is re-read per hand-off (rotation)."""

    def __init__(self, token: Callable[[], str | None], timeout: float = 30.0) -> None:
        self._token = token
        self.timeout = timeout

    async def send(self, peer: Peer, msg: SpooledMessage, rcpts: list[str], content: bytes) -> str:
        """Hand ``rcpts`` of ``msg`` over; returns the peer's answer. Raises HandoffError if it did not take it."""
        try:
            token = self._token()
        except OSError as exc:
            raise HandoffError(f"hand-off token unreadable: {exc}") from exc
        if not token:
            raise HandoffError("no hand-off token configured")
        body = encode(msg, rcpts, content)
        head = (f"POST {HANDOFF_PATH} HTTP/1.1\r\nHost: {peer.host}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(peer.host, peer.port)
                try:
                    writer.write(head.encode() + body)
                    await writer.drain()
                    answer = await reader.read(8192)
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            raise HandoffError(f"peer {peer.host}:{peer.port} unreachable: {exc or type(exc).__name__}") from exc
        status, _, rest = answer.partition(b"\r\n")
        text = rest.partition(b"\r\n\r\n")[2].decode("utf-8", "replace").strip()[:200]
        if status.split(b" ")[1:2] != [b"200"]:
            raise HandoffError(f"peer {peer.host}:{peer.port} refused: {status.decode('latin-1')[:80]} {text}")
        return text


class HandoffReceiver:
    """The delivery process's ``/handoff`` endpoint: validate, commit durably, then queue here."""

    def __init__(self, spool: Spool, config: Callable[[], MtaConfig], metrics: Metrics) -> None:
        self._spool = spool
        self._config = config
        self._metrics = metrics

    def body_limit(self) -> int:
        return self._config().limits.max_message_size + ENVELOPE_LIMIT

    async def __call__(self, method: str, path: str, content_type: str, body: bytes) -> Response:
        if method != "POST":
            return "405 Method Not Allowed", "text/plain", b"POST a hand-off\n"
        cfg = self._config()
        try:
            msg, content = decode(body, cfg.limits.max_recipients)
        except ValueError as exc:
            return "400 Bad Request", "text/plain", f"{exc}\n".encode()
        try:
            cfg.pool(msg.pool)
        except KeyError:  # the configs of the two replicas disagree for a moment: the sender retries
            return "503 Service Unavailable", "text/plain", f"pool {msg.pool!r} not served here\n".encode()
        queue_id, duplicate = await self._spool.commit(msg, content)
        if not duplicate:
            self._metrics.handed_over.labels(pool=msg.pool, direction="received").inc(len(msg.rcpts))
        return "200 OK", "text/plain", f"queued {queue_id}\n".encode()


def handoff_endpoint(spool: Spool, config: Callable[[], MtaConfig], metrics: Metrics,
                     token: Callable[[], str | None]) -> Handoff:
    """The HTTP server's ``/handoff``: who may use it, how large a request may be, and the receiver."""
    receiver = HandoffReceiver(spool, config, metrics)
    return Handoff(token=token, body_limit=receiver.body_limit, action=receiver)
