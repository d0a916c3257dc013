"""End to end: an MTA pod's /stats answers only with the operator-managed token; the usage collector has it."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from typing import Any

import pytest

from smtpinfra_operator.builders.mtaconfig import HTTP_PORT
from tests.e2e.common import NS, SINK_ADDR
from tests.e2e.test_smtpserver import pods, server_manifest
from tests.kube import apply, get, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.operator]


def _status(ip: str, path: str, token: str | None = None) -> int:
    req = urllib.request.Request(f"http://{ip}:{HTTP_PORT}{path}",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_pod_stats_need_the_operator_token(platform: Any, knot: Any, sink_factory: Any) -> None:
    cp = platform
    sink = sink_factory(addr=SINK_ADDR)
    apply(cp, server_manifest("guarded", knot, sink.port, replicas=1))
    result = cp.kubectl("-n", NS, "wait", "--for=condition=Ready", "smtpserver/guarded", "--timeout=120s",
                        check=False)
    assert result.returncode == 0, result.stderr
    secret = get(cp, "secret", "guarded-stats-token", NS)
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) >= 40
    (ip,) = [ip for ip in pods(cp, "guarded").values() if ip]
    assert _status(ip, "/healthz") == 200
    assert _status(ip, "/stats") == 401
    assert _status(ip, "/stats", "not-the-token") == 401
    wait_for(lambda: _status(ip, "/stats", token) == 200, timeout=60, what="/stats with the token")
    cp.kubectl("-n", NS, "delete", "smtpserver", "guarded", "--wait=false")


def test_a_token_secret_from_before_the_hand_off_gets_a_handoff_token_and_keeps_its_stats_token(
        platform: Any, knot: Any, sink_factory: Any) -> None:
    cp = platform
    sink = sink_factory(addr=SINK_ADDR)
    old = base64.b64encode(b"an-old-stats-token-made-by-an-earlier-operator").decode()
    apply(cp, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "older-stats-token", "namespace": NS},
               "type": "Opaque", "data": {"token": old}})
    apply(cp, server_manifest("older", knot, sink.port, replicas=1))
    try:
        secret = wait_for(lambda: (s := get(cp, "secret", "older-stats-token", NS))["data"].get("handoff") and s,
                          timeout=120, what="the handoff key added")
        assert secret["data"]["token"] == old
        assert len(base64.b64decode(secret["data"]["handoff"])) >= 40
    finally:
        cp.kubectl("-n", NS, "delete", "smtpserver", "older", "--wait=false")
