"""HTTP endpoints: /stats only with the operator's token; connection caps and request bounds (issue 11 item 10)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import MTA_ADDR, RunningMta, base_config, free_port, wait_for

pytestmark = pytest.mark.mta

POLICY = "version: STSv1\nmode: enforce\nmx: mta.test\nmax_age: 86400\n"


def http(port: int, path: str, headers: str = "", *, tls: bool = False) -> tuple[int, bytes]:
    raw = socket.create_connection((MTA_ADDR, port), timeout=20)
    sock: socket.socket = raw
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(raw, server_hostname="mta-sts.mta.test")
    with sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture
def mta(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], mta_factory: Any) -> RunningMta:
    (tmp_path / "stats-token").write_text("s3cret-token-1\n")
    cfg = base_config(tmp_path, tls_files, password_hashes)
    cfg["http"].update({"stats_token_file": str(tmp_path / "stats-token"), "max_connections": 3,
                        "request_timeout": "2s", "mta_sts_port": free_port(MTA_ADDR)})
    cfg["mta_sts"] = {"policy": POLICY}
    return mta_factory(cfg)


def test_stats_needs_the_operator_token(mta: RunningMta, tmp_path: Path) -> None:
    port = mta.app.http_port
    assert port is not None
    assert http(port, "/stats")[0] == 401
    assert http(port, "/stats", "Authorization: Bearer wrong\r\n")[0] == 401
    assert http(port, "/stats", "Authorization: Basic czNjcmV0LXRva2VuLTE=\r\n")[0] == 401
    code, body = http(port, "/stats", "Authorization: Bearer s3cret-token-1\r\n")
    assert code == 200 and "alpha" in json.loads(body)["tenants"]["accepted"]
    # A rotated Secret applies at once; an unreadable one refuses everyone.
    (tmp_path / "stats-token").write_text("s3cret-token-2")
    assert http(port, "/stats", "Authorization: Bearer s3cret-token-1\r\n")[0] == 401
    assert http(port, "/stats", "Authorization: Bearer s3cret-token-2\r\n")[0] == 200
    (tmp_path / "stats-token").unlink()
    assert http(port, "/stats", "Authorization: Bearer s3cret-token-2\r\n")[0] == 503
    # Probes and scrapes need no token; the public HTTPS listener never serves stats.
    assert http(port, "/healthz")[0] == 200 and http(port, "/metrics")[0] == 200
    assert mta.app.mta_sts_port is not None
    assert http(mta.app.mta_sts_port, "/stats", "Authorization: Bearer s3cret-token-2\r\n", tls=True)[0] == 404


def test_idle_tls_connections_are_cut_at_the_handshake_deadline(mta: RunningMta) -> None:
    """On the public HTTPS listener a client that never completes its handshake is dropped at the
    request deadline (the handshake is the server's own; the cap counts handshaken connections)."""
    port = mta.app.mta_sts_port
    assert port is not None
    held = [socket.create_connection((MTA_ADDR, port), timeout=30) for _ in range(5)]
    try:
        for s in held:
            with contextlib.suppress(OSError):
                assert s.recv(100) == b""
        assert http(port, "/.well-known/mta-sts.txt", tls=True)[0] == 200
    finally:
        for s in held:
            s.close()


def _opened(port: int, *, tls: bool) -> socket.socket:
    """A connection that holds a slot: plain, or with its TLS handshake done and no request sent."""
    raw = socket.create_connection((MTA_ADDR, port), timeout=20)
    if not tls:
        return raw
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx.wrap_socket(raw)


@pytest.mark.parametrize("listener", ["http", "mta_sts"])
def test_idle_connections_cannot_hold_an_http_listener(mta: RunningMta, listener: str) -> None:
    port = mta.app.http_port if listener == "http" else mta.app.mta_sts_port
    assert port is not None
    path = "/healthz" if listener == "http" else "/.well-known/mta-sts.txt"
    held = [_opened(port, tls=listener == "mta_sts") for _ in range(3)]
    try:
        wait_for(lambda: mta.call(lambda: sum(mta.app._http.open_connections.values())) >= 3, 20)
        over = _opened(port, tls=listener == "mta_sts")
        with over:
            over.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            try:
                answer = over.recv(100)
            except OSError:
                answer = b""
        assert answer == b"", "a connection over the cap is closed without being served"
        # The held ones are dropped after the request deadline; the listener serves again.
        for s in held:
            s.settimeout(30)
            with contextlib.suppress(OSError):
                assert s.recv(100) == b""
        assert http(port, path, tls=listener == "mta_sts")[0] == 200
    finally:
        for s in held:
            s.close()


def test_request_bounds(mta: RunningMta) -> None:
    port = mta.app.http_port
    assert port is not None
    assert http(port, "/healthz", "X-Big: " + "a" * 20000 + "\r\n")[0] == 431
    assert http(port, "/healthz", "".join(f"X-{i}: {'b' * 100}\r\n" for i in range(100)))[0] == 431
    # A client dribbling header lines is cut off at the request deadline, not served forever.
    with socket.create_connection((MTA_ADDR, port), timeout=30) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 25:
            try:
                s.sendall(b"X-Slow: 1\r\n")
                s.settimeout(0.5)
                if s.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed
