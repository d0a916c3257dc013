"""Readiness: health endpoints, a small admin client of the API server, waiting for nodes and components."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtpinfra_testenv import pki as pkimod

from .layout import KWOK_NODE_ANNOTATION, PORTS, ControlPlaneError
from .processes import alive, tail


@dataclass(frozen=True)
class AdminApi:
    """A tiny admin client for the API server, used for health checks and bootstrapping."""

    server: str
    ctx: ssl.SSLContext

    @staticmethod
    def for_pki(server: str, pki: pkimod.Pki) -> AdminApi:
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        ctx.load_cert_chain(str(pki.client_cert(pkimod.ADMIN)), str(pki.client_key(pkimod.ADMIN)))
        return AdminApi(server, ctx)

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 5.0
    ) -> tuple[int, dict[str, Any] | str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with open_url(req, self.ctx, timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        text = raw.decode(errors="replace")
        try:
            parsed = json.loads(text)
        except ValueError:
            return status, text
        return status, parsed if isinstance(parsed, dict) else text

    def ok(self, path: str) -> bool:
        try:
            status, _ = self.request("GET", path, timeout=2.0)
        except (OSError, ssl.SSLError):
            return False
        return status == 200


def open_url(req: urllib.request.Request, ctx: ssl.SSLContext | None, timeout: float) -> Any:
    """Open ``req`` ignoring proxy settings from the environment: all our traffic is loopback."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ctx is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    return urllib.request.build_opener(*handlers).open(req, timeout=timeout)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """GET a health endpoint; self-signed serving certs of KCM/scheduler are not verified."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with open_url(urllib.request.Request(url), ctx, timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


def health_url(name: str, ports: dict[str, int]) -> str:
    port = ports[PORTS[name][0]]
    return {
        "etcd": f"http://127.0.0.1:{port}/health",
        "kube-apiserver": f"https://127.0.0.1:{port}/readyz",
        "kube-controller-manager": f"https://127.0.0.1:{port}/healthz",
        "kube-scheduler": f"https://127.0.0.1:{port}/healthz",
        "kwok": f"http://127.0.0.1:{port}/healthz",
    }[name]

def wait_healthy(what: str, check: Callable[[], bool], deadline: float, sd: Path,
                 watch: dict[str, dict[str, int]]) -> None:
    """Poll ``check`` until it holds; fail fast (with the log tail) if a watched component died."""
    delay = 0.05
    while True:
        if check():
            return
        for name, rec in watch.items():
            if not alive(rec):
                raise ControlPlaneError(
                    f"{name} exited while waiting for {what}; last log lines "
                    f"({sd / 'logs' / (name + '.log')}):\n{tail(sd / 'logs' / (name + '.log'))}"
                )
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {n}:\n{tail(sd / 'logs' / (n + '.log'), 10)}" for n in watch)
            raise ControlPlaneError(f"timed out waiting for {what}\n{tails}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def node_body(name: str) -> dict[str, Any]:
    key, value = KWOK_NODE_ANNOTATION
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
            },
        },
    }


def node_ready(api: AdminApi, name: str) -> bool:
    """Ready, and the lifecycle controller has lifted the not-ready taint (pods can schedule)."""
    try:
        status, node = api.request("GET", f"/api/v1/nodes/{name}", timeout=2.0)
    except OSError:
        return False
    if status != 200 or not isinstance(node, dict):
        return False
    conditions = node.get("status", {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = node.get("spec", {}).get("taints") or []
    blocking = [t for t in taints if t.get("effect") in ("NoSchedule", "NoExecute")]
    return ready and not blocking

