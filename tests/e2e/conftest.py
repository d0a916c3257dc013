"""Fixtures of the end-to-end tests: a Knot server with the recipients' MX, the platform objects."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.dns.knot import FORWARD_ZONE, KnotServer
from tests.e2e.common import NS, POOL_ADDRESSES, RCPT_DOMAIN, SENDER_DOMAIN, SINK_ADDR
from tests.kube import apply, crds, operator
from tests.mta.conftest import sink_factory, tls_files


@pytest.fixture(scope="module")
def knot():
    with tempfile.TemporaryDirectory() as d:
        server = KnotServer(Path(d))
        server.start()
        server.foreign_update(FORWARD_ZONE, add=[(RCPT_DOMAIN, 60, "MX", f"10 sink.{FORWARD_ZONE}."),
                                                 (f"sink.{FORWARD_ZONE}", 60, "A", SINK_ADDR)])
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def platform(operator, pod_runner, knot, tls_files):
    """The platform objects of this module: TLS Secret, pool, tenant."""
    cp = operator.cp
    cp.kubectl("create", "namespace", NS, check=False)
    cert, key = tls_files
    cp.kubectl("-n", NS, "create", "secret", "tls", "mta-tls", f"--cert={cert}", f"--key={key}", check=False)
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": "e2e-pool"},
               "spec": {"addresses": POOL_ADDRESSES[:2], "ptrTemplate": "mta-{index}.e2e.example.test"}})
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Tenant",
               "metadata": {"name": "e2e-acme", "labels": {"tier": "e2e"}},
               "spec": {"displayName": "ACME e2e", "senderDomains": [SENDER_DOMAIN]}})
    cp.kubectl("wait", "--for=condition=Ready", "tenant/e2e-acme", "--timeout=60s")
    yield cp
    # Leave the session cluster tidy for later modules: stop this module's MTAs.
    cp.kubectl("-n", NS, "delete", "smtpserver", "--all", "--wait=false", check=False)


