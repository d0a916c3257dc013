"""The external-dns DNSEndpoint builder, validated against external-dns's own CRD.

dnsendpoints.externaldns.k8s.io.yaml is copied verbatim from the Go module
sigs.k8s.io/external-dns@v0.20.0 (config/crd/standard/dnsendpoints.externaldns.k8s.io.yaml),
fetched with `go mod download -json sigs.k8s.io/external-dns@v0.20.0` from the Go module proxy
(go.sum h1:rJ4Q5c32NStvI8J+u2nyM4bcKxZG4g1NLPL0p994U9M=).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from smtpinfra_operator.dns import build_dns_endpoint, build_records

from .scenario import scenario

pytestmark = pytest.mark.dns

CRD = Path(__file__).with_name("dnsendpoints.externaldns.k8s.io.yaml")


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown properties forbidden: the API server would prune them silently."""
    s = copy.deepcopy(schema)
    if "properties" in s and "additionalProperties" not in s:
        s["additionalProperties"] = False
    for key, sub in list(s.get("properties", {}).items()):
        s["properties"][key] = _closed(sub)
    if isinstance(s.get("items"), dict):
        s["items"] = _closed(s["items"])
    return s


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["group"] == "externaldns.k8s.io" and crd["spec"]["names"]["kind"] == "DNSEndpoint"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return _closed(version["schema"]["openAPIV3Schema"])


def test_dns_endpoint_validates_against_the_crd(schema: dict[str, Any]) -> None:
    records = build_records(scenario("x", 10, [11, 12], mta_sts=True))
    obj = build_dns_endpoint("mail/x", records, owner_uid="0b5e6c0e-1111-4222-8333-944455556666")
    jsonschema.validate(obj, schema)
    assert obj["apiVersion"] == "externaldns.k8s.io/v1alpha1" and obj["kind"] == "DNSEndpoint"
    assert obj["metadata"]["namespace"] == "mail" and obj["metadata"]["name"] == "x-dns"
    assert obj["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "smtp-infra", "smtpinfra.com/smtp-server": "x"}
    assert obj["metadata"]["ownerReferences"][0]["kind"] == "SmtpServer"
    eps = {(e["dnsName"], e["recordType"]): e for e in obj["spec"]["endpoints"]}
    assert len(eps) == len(records)
    assert eps[("bounces.x.example.test", "MX")]["targets"] == ["10 mta.x.example.test"]
    assert eps[("x.example.test", "TXT")]["targets"] == ["v=spf1 ip4:127.0.10.11 ip4:127.0.10.12 -all"]
    assert eps[("11.10.0.127.in-addr.arpa", "PTR")]["targets"] == ["out11.x.example.test"]
    assert eps[("out12.x.example.test", "A")] == {
        "dnsName": "out12.x.example.test", "recordType": "A", "targets": ["127.0.10.12"], "recordTTL": 60,
        "labels": {"smtpinfra.com/smtp-server": "x"}}


def test_the_schema_check_can_fail(schema: dict[str, Any]) -> None:
    obj = build_dns_endpoint("mail/x", build_records(scenario("x", 10, [11])))
    bad = copy.deepcopy(obj)
    bad["spec"]["endpoints"][0]["ttl"] = 60  # not a field: the API server would drop it
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = copy.deepcopy(obj)
    bad["spec"]["endpoints"][0]["recordTTL"] = "60"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
