"""A small Kubernetes API client: JSON requests and line-delimited watches.

Stdlib only: the generated client is heavy, and the runner needs raw JSON and watches.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]


class ApiError(RuntimeError):
    """An API request answered with an error status."""

    def __init__(self, status: int, body: Any, what: str) -> None:
        detail = body.get("message", body) if isinstance(body, dict) else body
        super().__init__(f"{what}: HTTP {status}: {detail}")
        self.status = status
        self.body = body


class KubeClient:
    """Just enough of a Kubernetes client: JSON requests and line-delimited watches."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext | None, token: str | None, server: str) -> None:
        self.host = host
        self.port = port
        self.ctx = ctx
        self.token = token
        self.server = server
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_kubeconfig(cls, path: Path, cert_dir: Path) -> KubeClient:
        """Build from a kubeconfig (client certs/token, CA data or files); certs are spilled to files."""
        cfg = yaml.safe_load(path.read_text())
        contexts = {c["name"]: c["context"] for c in cfg.get("contexts") or []}
        ctx_def: Obj = contexts.get(cfg.get("current-context", "")) or next(iter(contexts.values()), {})
        clusters = {c["name"]: c["cluster"] for c in cfg.get("clusters") or []}
        users = {u["name"]: u.get("user") or {} for u in cfg.get("users") or []}
        cluster: Obj = clusters.get(ctx_def.get("cluster", "")) or next(iter(clusters.values()))
        user: Obj = users.get(ctx_def.get("user", "")) or {}
        server = str(cluster["server"])
        parsed = urllib.parse.urlsplit(server)
        cert_dir.mkdir(parents=True, exist_ok=True)
        ssl_ctx: ssl.SSLContext | None = None
        if parsed.scheme == "https":
            if cluster.get("insecure-skip-tls-verify"):
                ssl_ctx = ssl.create_default_context()
                ssl_ctx.check_hostname = False
                ssl_ctx.verify_mode = ssl.CERT_NONE
            elif cluster.get("certificate-authority-data"):
                ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
                ssl_ctx = ssl.create_default_context(cadata=ca)
            else:
                ssl_ctx = ssl.create_default_context(cafile=cluster.get("certificate-authority"))

            def spill(data_key: str, file_key: str, name: str) -> str | None:
                if user.get(data_key):
                    target = cert_dir / name
                    target.touch(mode=0o600)
                    target.write_bytes(base64.b64decode(user[data_key]))
                    return str(target)
                return str(user[file_key]) if user.get(file_key) else None

            cert = spill("client-certificate-data", "client-certificate", "client.crt")
            key = spill("client-key-data", "client-key", "client.key")
            if cert:
                ssl_ctx.load_cert_chain(cert, key)
        token: str | None = user.get("token")
        if not token and user.get("tokenFile"):
            token = Path(user["tokenFile"]).read_text().strip()
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        return cls(parsed.hostname or "127.0.0.1", port, ssl_ctx, token, server)

    def _conn(self, timeout: float) -> http.client.HTTPConnection:
        if self.ctx is not None:
            return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "smtp-infra-pod-runner"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        timeout: float = 15.0,
        ok: tuple[int, ...] = (200, 201, 202),
    ) -> Any:
        """One request; returns the parsed JSON body or raises ApiError for statuses not in ``ok``."""
        data = json.dumps(body).encode() if body is not None else None
        conn = self._conn(timeout)
        try:
            conn.request(method, path, body=data, headers=self._headers(content_type if data is not None else None))
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        if resp.status not in ok:
            raise ApiError(resp.status, parsed, f"{method} {path}")
        return parsed

    def watch(self, path: str, params: dict[str, str], timeout: float) -> Iterator[Obj]:
        """Yield watch events until the server ends the watch (its timeoutSeconds) or it breaks."""
        query = urllib.parse.urlencode({**params, "watch": "1"})
        conn = self._conn(timeout)
        try:
            conn.request("GET", f"{path}?{query}", headers=self._headers(None))
            resp = conn.getresponse()
            if resp.status != 200:
                raise ApiError(resp.status, resp.read().decode(errors="replace"), f"watch {path}")
            sock = conn.sock
            if sock is not None:
                with self._lock:
                    self._socks.add(sock)
            try:
                while True:
                    line = resp.readline()
                    if not line:
                        return
                    if line.strip():
                        yield json.loads(line)
            finally:
                if sock is not None:
                    with self._lock:
                        self._socks.discard(sock)
        finally:
            conn.close()

    def close_watches(self) -> None:
        """Unblock every running watch (used on shutdown)."""
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
