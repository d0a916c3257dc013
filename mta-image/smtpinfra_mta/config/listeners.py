"""Listener sections: which SMTP ports a replica serves, with which TLS files and connection budgets."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from .types import DomainName, Duration, IPAddress, Section


class TlsFiles(Section):
    """A certificate chain and key mounted from a Secret (kubernetes.io/tls layout by default)."""

    cert_file: Path = Field(
        Path("/etc/smtp-infra/tls/tls.crt"), description="PEM certificate chain presented to SMTP clients."
    )
    key_file: Path = Field(Path("/etc/smtp-infra/tls/tls.key"), description="PEM private key of the certificate.")


class ListenerBase(Section):
    enabled: bool = Field(True, description="Whether this listener is started.")
    bind: list[IPAddress] = Field(
        default_factory=lambda: ["0.0.0.0"], min_length=1, description="Addresses to listen on (IPv4 or IPv6)."
    )
    proxy_protocol: bool = Field(
        False,
        description="Expect a HAProxy PROXY protocol (v1 or v2) header on every connection "
        "(set when a load balancer in front preserves client addresses this way).",
    )


class SubmissionListener(ListenerBase):
    """Authenticated submission (RFC 6409): STARTTLS, then AUTH PLAIN/LOGIN, before MAIL."""

    port: int = Field(587, ge=1, le=65535, description="TCP port (587 by convention).")


class ImplicitTlsListener(ListenerBase):
    """Submission over implicit TLS (RFC 8314, port 465): TLS from the first byte, then AUTH."""

    enabled: bool = Field(False, description="Whether the implicit-TLS listener is started.")
    port: int = Field(465, ge=1, le=65535, description="TCP port (465 by convention).")


class RelayDomain(Section):
    """A domain this MTA accepts and forwards on port 25 without AUTH (Postfix's ``relay_domains``).

    For an inbound gateway or backup MX in front of an internal mail host. Only mail *to* this domain is
    accepted, never to anywhere else, so listing a domain does not make the MTA an open relay. The next hop
    is the domain's ``delivery.routes`` entry when there is one, otherwise its MX hosts.
    """

    domain: DomainName = Field(description="Recipient domain accepted and forwarded (exact match).")
    pool: str = Field(description="Name of the IP pool (see 'pools') whose source IPs forward this mail.")


class InboundListener(ListenerBase):
    """Unauthenticated port 25: accepts mail only for the bounce/FBL domains and the relay domains."""

    port: int = Field(25, ge=1, le=65535, description="TCP port (25 by convention).")
    domains: list[DomainName] = Field(
        default_factory=list,
        description="Domains this listener accepts recipients for: the return-path (asynchronous bounce) "
        "domain and the feedback-loop (ARF complaint) domain. Everything else is refused with 5.7.1.",
    )
    relay_domains: list[RelayDomain] = Field(
        default_factory=list,
        description="Domains accepted on port 25 and forwarded (inbound gateway / backup MX). A transaction "
        "carries recipients of one kind only: report domains, or relay domains of one pool.",
    )
    starttls: bool = Field(True, description="Offer STARTTLS (not required) on port 25.")


class Listeners(Section):
    submission: SubmissionListener = Field(
        default_factory=SubmissionListener, description="Port 587: STARTTLS + AUTH required."
    )
    implicit_tls: ImplicitTlsListener = Field(
        default_factory=ImplicitTlsListener, description="Port 465: implicit TLS + AUTH required (optional)."
    )
    inbound: InboundListener = Field(
        default_factory=InboundListener, description="Port 25: inbound bounces and complaint reports only."
    )
    processes: int = Field(
        1, ge=1, le=32,
        description="Processes accepting on these listeners (needs delivery.separate_process). They share the "
        "listening sockets, the spool volume, one idempotency index and the quota counters; the connection "
        "totals and the DATA memory ceiling are split evenly between them, the per-address limits apply in each.",
    )


class ListenerLimits(Section):
    """Connection budget of one listener kind, separate from the others' (port 25 cannot use up 587/465)."""

    max_connections: int = Field(1000, ge=1, le=100_000, description="Concurrent connections to this listener.")
    max_connections_per_ip: int = Field(
        50, ge=1, le=100_000, description="Concurrent connections to this listener from one client address.")
    idle_timeout: Duration | None = Field(
        None, gt=0, description="Seconds a session may wait for the next command; null: limits.command_timeout.")
    session_time_limit: Duration = Field(
        3600.0, gt=0, le=86400,
        description="Longest session, however active (NOOP, RSET and the like cannot extend it); a message "
        "being received or committed is finished first, then the session is closed with 421.")


def _inbound_limits() -> ListenerLimits:
    return ListenerLimits(max_connections=500, max_connections_per_ip=50, session_time_limit=600.0)


class SmtpLimits(Section):
    """Per-session limits, and the connection budget of each listener kind."""

    max_message_size: int = Field(
        25 * 1024 * 1024, ge=1024, description="Largest message accepted in bytes (advertised as SIZE)."
    )
    max_recipients: int = Field(100, ge=1, le=100_000, description="Most RCPT TO accepted per transaction.")
    command_timeout: Duration = Field(
        300.0, gt=0, description="Idle time before a session is closed (seconds), unless its listener sets one.")
    max_sessions: int = Field(
        100_000, ge=1, description="Process-wide ceiling of concurrent sessions, above the per-listener budgets "
        "(which are what normally applies: submission, implicit_tls, inbound).")
    submission: ListenerLimits = Field(default_factory=ListenerLimits, description="Port 587 connection budget.")
    implicit_tls: ListenerLimits = Field(default_factory=ListenerLimits, description="Port 465 connection budget.")
    inbound: ListenerLimits = Field(default_factory=_inbound_limits, description="Port 25 connection budget.")
    max_data_memory: int = Field(
        256 * 1024 * 1024, ge=1024 * 1024,
        description="Bytes of message data all sessions together may hold in memory while receiving; a message "
        "that would pass it is discarded as it arrives and refused with 452 4.3.1 (the client retries).")
    proxy_protocol_timeout: Duration = Field(5.0, gt=0, description="Time allowed for the PROXY header.")
    max_header_bytes: int = Field(
        256 * 1024, ge=4096, le=16 * 1024 * 1024,
        description="Largest header section of a submitted message (bytes); larger ones are refused with 552.")
    max_header_fields: int = Field(
        1000, ge=16, le=100_000, description="Most header fields of a submitted message; more are refused with 552.")
