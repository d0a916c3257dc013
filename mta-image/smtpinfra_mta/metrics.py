"""Prometheus metrics and the HTTP endpoints (/metrics, /healthz, /readyz, /stats, MTA-STS policy).

A private registry per MTA instance keeps tests (several MTAs in one process) independent. The HTTP
server is a tiny asyncio one so it shares the event loop and needs no extra dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from smtpinfra_mta.config.throttling import WarmupCap

log = logging.getLogger(__name__)

_PATH_LABELS = ["tenant", "pool", "source_ip", "provider"]
UNSUBSCRIBE_PREFIX = "/unsubscribe/"
ERASE_PATH = "/erase"
HANDOFF_PATH = "/handoff"
"""The delivery process's endpoint where a peer replica hands over queued mail (``smtpinfra_mta.handoff``)."""
Response = tuple[str, str, bytes]
Action = Callable[[str, str, str, bytes], Awaitable[Response]]
"""(method, path, content type, body) -> response: the endpoints that act (unsubscribe, erase)."""
MTA_STS_PATH = "/.well-known/mta-sts.txt"
"""Where senders fetch the MTA-STS policy (RFC 8461 section 3.3), on https://mta-sts.<domain>/."""


def read_token(path: Path | None) -> str | None:
    """A bearer token from its mounted file, read per request so a rotated Secret applies at once (None: none
    configured); raises OSError when the file is unreadable (the endpoint then refuses everyone)."""
    return None if path is None else path.read_text(encoding="utf-8").strip()


Snapshot = list[tuple[str, str, str, list[tuple[str, dict[str, str], float]]]]


class _Families:
    """A collector that yields fixed metric families (the sums of several processes' snapshots)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.accepted = Counter("smtpinfra_mta_accepted", "Recipients accepted for delivery",
                                ["tenant", "pool", "listener"], registry=r)
        self.rejected = Counter("smtpinfra_mta_rejected", "SMTP commands refused", ["listener", "reason"],
                                registry=r)
        self.delivered = Counter("smtpinfra_mta_delivered", "Recipients delivered", _PATH_LABELS, registry=r)
        self.deferred = Counter("smtpinfra_mta_deferred", "Temporary delivery failures", _PATH_LABELS, registry=r)
        self.bounced = Counter("smtpinfra_mta_bounced", "Recipients bounced", [*_PATH_LABELS, "bounce_class"],
                               registry=r)
        self.suppressed = Counter("smtpinfra_mta_suppressed", "Recipients skipped by suppression", _PATH_LABELS,
                                  registry=r)
        self.complained = Counter("smtpinfra_mta_complained", "ARF complaint reports received", ["tenant"],
                                  registry=r)
        self.throttle_waits = Counter("smtpinfra_mta_throttle_waits", "Times delivery waited for a limit",
                                      ["reason"], registry=r)
        self.automation = Counter("smtpinfra_mta_automation_fired", "Automation rules fired", ["rule"], registry=r)
        self.auth_failures = Counter("smtpinfra_mta_auth_failures", "Failed AUTH attempts", ["listener"],
                                     registry=r)
        self.queue_depth = Gauge("smtpinfra_mta_queue_messages", "Messages in the queue", registry=r)
        self.oldest_age = Gauge("smtpinfra_mta_queue_oldest_age_seconds", "Age of the oldest queued message",
                                registry=r)
        self.sessions = Gauge("smtpinfra_mta_sessions", "Open inbound SMTP sessions", registry=r)
        self.handed_over = Counter("smtpinfra_mta_handed_over", "Recipients handed to (sent) or taken over from "
                                   "(received) a peer replica", ["pool", "direction"], registry=r)
        self.warmup_cap = Gauge("smtpinfra_mta_warmup_cap_messages",
                                "Warm-up cap this process enforces per source address and window (provider "
                                "'all': the cap over every provider)", ["source_ip", "provider", "window"],
                                registry=r)

        self.others: dict[int, Snapshot] = {}
        """The other receiving processes' latest snapshots (``listeners.processes``), summed into render()."""

    def snapshot(self) -> Snapshot:
        """Every sample as plain data, for the first receiving process to add up (``_created`` left out)."""
        return [(m.name, m.type, m.documentation,
                 [(s.name, s.labels, s.value) for s in m.samples if not s.name.endswith("_created")])
                for m in self.registry.collect()]

    def render(self) -> bytes:
        if not self.others:
            return generate_latest(self.registry)
        families: dict[str, Metric] = {}
        sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for snap in [self.snapshot(), *self.others.values()]:
            for name, typ, doc, samples in snap:
                if name not in families:
                    families[name] = Metric(name, doc, typ)
                    sums[name] = {}
                for sample, sample_labels, value in samples:
                    key = (sample, tuple(sorted(sample_labels.items())))
                    sums[name][key] = sums[name].get(key, 0.0) + value
        for name, metric in families.items():
            for (sample, labels), value in sums[name].items():
                metric.add_sample(sample, dict(labels), value)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(list(families.values())))
        return generate_latest(registry)


    def show_warmup_caps(self, caps: Iterable[WarmupCap]) -> None:
        """Replace the exported caps with those of the config now in force (a reload drops old addresses)."""
        self.warmup_cap.clear()
        for cap in caps:
            for window, limit in (("day", cap.per_day), ("hour", cap.per_hour)):
                if limit is not None:
                    self.warmup_cap.labels(cap.source_ip, cap.provider or "all", window).set(limit)


@dataclass(frozen=True)
class Handoff:
    """The hand-off endpoint of a delivery process: who may use it, how large a request may be, what it does."""

    token: Callable[[], str | None]
    """The bearer token peers present (None: not configured, every hand-off is refused)."""
    body_limit: Callable[[], int]
    action: Action


@dataclass(frozen=True)
class HttpLimits:
    """Bounds of every HTTP listener: a client can hold at most one slot for at most ``request_timeout``."""

    max_connections: int = 128
    request_timeout: float = 10.0
    max_request_bytes: int = 8192
    """Request line plus header fields."""
    max_body_bytes: int = 16384
    """The body of a POST (one-click unsubscribe forms, erase requests); larger ones get 413."""


class HttpServer:
    """Serves /metrics, /healthz (process alive), /readyz (accepting mail), /stats (JSON) and the MTA-STS policy.

    ``mta_sts_policy`` returns the current policy text (None: 404), read per request so a config reload
    changes what is served. ``start(..., tls=ctx, mta_sts_only=True)`` adds a listener for the public HTTPS
    endpoint of ``mta-sts.<domain>``, which answers the policy path only (no metrics or stats).
    ``stats_token`` returns the bearer token /stats requires (read per request, so a rotated Secret applies
    at once); None means no token is configured and /stats is open (local runs), and an unreadable token
    file makes /stats refuse everyone. Each listener has its own connection cap, and a request must arrive
    whole, within a size bound, inside one deadline, so slow or idle clients cannot hold the listener.
    """

    def __init__(self, metrics: Metrics, ready: Callable[[], bool], stats: Callable[[], dict[str, Any]],
                 before_scrape: Callable[[], None] | None = None,
                 mta_sts_policy: Callable[[], str | None] | None = None,
                 stats_token: Callable[[], str | None] | None = None,
                 limits: HttpLimits | None = None, unsubscribe: Action | None = None,
                 erase: Action | None = None, handoff: Handoff | None = None) -> None:
        self._metrics = metrics
        self._handoff = handoff
        self._unsubscribe = unsubscribe
        self._erase = erase
        self._ready = ready
        self._stats = stats
        self._before = before_scrape
        self._mta_sts_policy = mta_sts_policy
        self._stats_token = stats_token
        self.limits = limits or HttpLimits()
        self._servers: list[asyncio.Server] = []
        self.open_connections: dict[int, int] = {}

    async def start(self, host: str, port: int, *, tls: ssl.SSLContext | None = None,
                    mta_sts_only: bool = False) -> int:
        """Open one listener; returns its port. Call again for further listeners (e.g. the HTTPS one)."""
        index = len(self._servers)
        self.open_connections[index] = 0
        # The TLS handshake is the server's own, bounded by the request deadline (a handler that started
        # TLS itself lost the ClientHello to the plain stream reader under the pods' event loop); a
        # connection counts against the cap once its handshake is done.
        handler = functools.partial(self._handle, mta_sts_only=mta_sts_only, index=index)
        server = await asyncio.start_server(handler, host, port, limit=self.limits.max_request_bytes, ssl=tls,
                                            ssl_handshake_timeout=self.limits.request_timeout if tls else None)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                      mta_sts_only: bool = False, index: int = 0) -> None:
        if self.open_connections[index] >= self.limits.max_connections:
            writer.close()  # over the cap: no request is read, the slot is not taken
            return
        self.open_connections[index] += 1
        try:
            async with asyncio.timeout(self.limits.request_timeout):
                await self._serve(reader, writer, mta_sts_only=mta_sts_only)
        except (TimeoutError, OSError, UnicodeDecodeError):  # OSError: resets
            pass
        finally:
            self.open_connections[index] -= 1
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, mta_sts_only: bool) -> None:
        status, ctype, body = await self._respond(reader, mta_sts_only=mta_sts_only)
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode() + body
        )
        await writer.drain()

    async def _respond(self, reader: asyncio.StreamReader, *, mta_sts_only: bool) -> tuple[str, str, bytes]:
        """Read one request within the size bound; the response tuple (status, content type, body)."""
        total = 0
        lines: list[bytes] = []
        try:
            while True:
                line = await reader.readline()
                total += len(line)
                if total > self.limits.max_request_bytes:
                    return "431 Request Header Fields Too Large", "text/plain", b"request too large\n"
                if line in (b"\r\n", b"\n", b""):
                    break
                lines.append(line)
        except (ValueError, asyncio.LimitOverrunError):  # one line longer than the reader's limit
            return "431 Request Header Fields Too Large", "text/plain", b"request too large\n"
        if not lines:
            return "400 Bad Request", "text/plain", b"bad request\n"
        parts = lines[0].decode("latin-1").split()
        path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
        if not mta_sts_only and path == HANDOFF_PATH and self._handoff is not None:
            return await self._take_handoff(reader, parts[0].upper(), lines[1:], self._handoff)
        if not mta_sts_only and (path.startswith(UNSUBSCRIBE_PREFIX) or path == ERASE_PATH):
            return await self._act(reader, parts[0].upper(), path, lines[1:])
        if path == "/stats" and not mta_sts_only:
            refusal = self._stats_refusal(lines[1:])
            if refusal is not None:
                return refusal
        return self._route(path, mta_sts_only=mta_sts_only)

    async def _act(self, reader: asyncio.StreamReader, method: str, path: str,
                   header_lines: list[bytes]) -> Response:
        """An endpoint that changes state: its body is read within the size bound, then handed over."""
        action = self._erase if path == ERASE_PATH else self._unsubscribe
        if action is None:
            return "404 Not Found", "text/plain", b"not found\n"
        if path == ERASE_PATH:
            try:
                configured = self._stats_token is not None and self._stats_token() is not None
            except OSError:
                configured = True  # unreadable: refused below with 503
            if not configured:
                return "403 Forbidden", "text/plain", b"erase needs a stats token (http.stats_token_file)\n"
            refusal = self._stats_refusal(header_lines)
            if refusal is not None:
                return refusal
        headers = {}
        for line in header_lines:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if method == "POST":
            if "transfer-encoding" in headers:
                return "411 Length Required", "text/plain", b"a Content-Length is required\n"
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                return "400 Bad Request", "text/plain", b"bad request\n"
            if length < 0 or length > self.limits.max_body_bytes:
                return "413 Content Too Large", "text/plain", b"request too large\n"
            try:
                body = await reader.readexactly(length)
            except asyncio.IncompleteReadError:
                return "400 Bad Request", "text/plain", b"bad request\n"
        return await action(method, path, headers.get("content-type", ""), body)

    async def _take_handoff(self, reader: asyncio.StreamReader, method: str, header_lines: list[bytes],
                            handoff: Handoff) -> Response:
        """A peer's hand-off: its token first, then a body bounded by the largest message plus its envelope."""
        try:
            configured = handoff.token() is not None
        except OSError:
            return "503 Service Unavailable", "text/plain", b"hand-off token unavailable\n"
        if not configured:
            return "403 Forbidden", "text/plain", b"hand-off needs http.handoff_token_file\n"
        refusal = self._bearer_refusal(header_lines, handoff.token, "hand-off")
        if refusal is not None:
            return refusal
        length = -1
        for line in header_lines:
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip()) if value.strip().isdigit() else -1
        if length < 0:
            return "411 Length Required", "text/plain", b"a Content-Length is required\n"
        if length > handoff.body_limit():
            return "413 Content Too Large", "text/plain", b"message too large\n"
        try:
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            return "400 Bad Request", "text/plain", b"bad request\n"
        return await handoff.action(method, HANDOFF_PATH, "", body)

    def _stats_refusal(self, header_lines: list[bytes]) -> tuple[str, str, bytes] | None:
        if self._stats_token is None:
            return None
        return self._bearer_refusal(header_lines, self._stats_token, "stats")

    @staticmethod
    def _bearer_refusal(header_lines: list[bytes], token_of: Callable[[], str | None],
                        what: str) -> tuple[str, str, bytes] | None:
        """None when the request carries the token ``token_of`` returns (None: no token needed)."""
        try:
            token = token_of()
        except OSError:
            return "503 Service Unavailable", "text/plain", f"{what} token unavailable\n".encode()
        if token is None:
            return None
        presented = b""
        for line in header_lines:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"authorization":
                scheme, _, cred = value.strip().partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = cred.strip()
        if not token or not hmac.compare_digest(presented, token.encode()):
            return "401 Unauthorized", "text/plain", b"a bearer token is required\n"
        return None

    def _route(self, path: str, *, mta_sts_only: bool = False) -> tuple[str, str, bytes]:
        if path == MTA_STS_PATH:
            policy = self._mta_sts_policy() if self._mta_sts_policy is not None else None
            if policy is None:
                return "404 Not Found", "text/plain", b"no MTA-STS policy\n"
            # RFC 8461 section 3.3: 200, Content-Type text/plain, no redirects; served byte for byte.
            return "200 OK", "text/plain", policy.encode()
        if mta_sts_only:
            return "404 Not Found", "text/plain", b"not found\n"
        if path == "/metrics":
            if self._before is not None:
                self._before()
            return "200 OK", CONTENT_TYPE_LATEST, self._metrics.render()
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            if self._ready():
                return "200 OK", "text/plain", b"ready\n"
            return "503 Service Unavailable", "text/plain", b"not ready\n"
        if path == "/stats":
            if self._before is not None:
                self._before()
            return "200 OK", "application/json", json.dumps(self._stats(), sort_keys=True).encode()
        return "404 Not Found", "text/plain", b"not found\n"
