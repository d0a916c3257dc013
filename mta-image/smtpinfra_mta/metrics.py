"""Prometheus metrics and the HTTP endpoints (/metrics, /healthz, /readyz, /stats).

A private registry per MTA instance keeps tests (several MTAs in one process) independent. The HTTP
server is a tiny asyncio one so it shares the event loop and needs no extra dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

_PATH_LABELS = ["tenant", "pool", "source_ip", "provider"]


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

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HttpServer:
    """Serves /metrics, /healthz (process alive), /readyz (accepting mail) and /stats (JSON)."""

    def __init__(self, metrics: Metrics, ready: Callable[[], bool], stats: Callable[[], dict[str, Any]],
                 before_scrape: Callable[[], None] | None = None) -> None:
        self._metrics = metrics
        self._ready = ready
        self._stats = stats
        self._before = before_scrape
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10)
            while True:  # discard headers
                line = await asyncio.wait_for(reader.readline(), 10)
                if line in (b"\r\n", b"\n", b""):
                    break
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            status, ctype, body = self._route(path)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    def _route(self, path: str) -> tuple[str, str, bytes]:
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
