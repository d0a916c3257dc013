"""spec.limits on a real kube-apiserver: documented, ranges enforced, valid values accepted."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.api.test_apiserver import example
from tests.kube import apply

pytestmark = pytest.mark.api


def _server(limits: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(example("SmtpServer"))
    doc["metadata"]["name"] = "limits"
    doc["spec"]["limits"] = limits
    return doc


def _dry_run(crds: Any, doc: dict[str, Any]) -> Any:
    crds.kubectl("create", "namespace", doc["metadata"]["namespace"], check=False)
    return apply(crds, doc, "--dry-run=server", check=False)


def test_limits_are_documented(crds: Any) -> None:
    out = crds.kubectl("explain", "smtpserver.spec.limits.inbound").stdout
    assert "maxConnectionsPerIp" in out and "sessionTimeLimit" in out
    assert "NOOP" in crds.kubectl("explain", "smtpserver.spec.limits.inbound.sessionTimeLimit").stdout
    assert "452 4.3.1" in crds.kubectl("explain", "smtpserver.spec.limits.maxDataMemory").stdout


def test_valid_limits_are_accepted(crds: Any) -> None:
    result = _dry_run(crds, _server({"inbound": {"maxConnections": 200, "maxConnectionsPerIp": 5,
                                                 "idleTimeout": "1m", "sessionTimeLimit": "10m"},
                                     "submission": {"maxConnectionsPerIp": 100},
                                     "maxDataMemory": 134217728}))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("limits", "field"), [
    ({"inbound": {"maxConnectionsPerIp": 0}}, "spec.limits.inbound.maxConnectionsPerIp"),
    ({"submission": {"maxConnections": 100001}}, "spec.limits.submission.maxConnections"),
    ({"maxDataMemory": 1000}, "spec.limits.maxDataMemory"),
    ({"inbound": {"idleTimeout": "soon"}}, "spec.limits.inbound.idleTimeout"),
    ({"inbound": {"maxSessions": 3}}, "maxSessions"),
])
def test_out_of_range_limits_are_refused_naming_the_field(crds: Any, limits: dict[str, Any], field: str) -> None:
    result = _dry_run(crds, _server(limits))
    assert result.returncode != 0, "accepted"
    assert field in result.stderr, result.stderr
