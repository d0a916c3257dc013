"""Which Secrets a server reads without owning them: a change to one reconciles the server at once."""

from __future__ import annotations

import pytest

from smtpinfra_operator.controllers.smtpserver import referenced_secrets


@pytest.mark.parametrize(("spec", "expected"), [
    ({}, set()),
    ({"tls": {"secretName": "smtp-tls"}}, {"smtp-tls"}),
    ({"tls": {"issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"}}}, {"outbound-tls"}),
    ({"dkim": {"keys": [{"domain": "a.test", "selector": "s1", "secretName": "dkim-a"},
                        {"domain": "b.test", "selector": "s1"}]}}, {"dkim-a"}),
    ({"tls": {"secretName": "smtp-tls"}, "dkim": {"keys": [{"secretName": "dkim-a"}]}}, {"smtp-tls", "dkim-a"}),
])
def test_referenced_secrets(spec, expected):
    server = {"metadata": {"name": "outbound", "namespace": "default"}, "spec": spec}
    assert referenced_secrets(server) == expected
