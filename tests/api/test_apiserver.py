"""The CRDs on a real kube-apiserver: install, explain, printer columns, examples, refusals."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from smtpinfra_api.v1alpha1 import KINDS
from tests.kube import EXAMPLES, apply

pytestmark = pytest.mark.api

API = "smtpinfra.com/v1alpha1"


BASE_EXAMPLE = {"WarmupPlan": "standard"}  # the explicit schedule; the geometric one is covered by tests too


def example(kind: str) -> dict[str, Any]:
    """The example document of a kind that the bad manifests start from."""
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind and doc["apiVersion"] == API and (
                kind not in BASE_EXAMPLE or doc["metadata"]["name"] == BASE_EXAMPLE[kind]
            ):
                return doc
    raise LookupError(kind)


def test_every_crd_is_established(crds):
    out = json.loads(crds.kubectl("get", "crd", "-o", "json").stdout)
    ours = {i["metadata"]["name"]: i for i in out["items"] if i["spec"]["group"] == "smtpinfra.com"}
    assert set(ours) == {k.crd_name() for k in KINDS}
    for crd in ours.values():
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True"
        assert conditions.get("NamesAccepted") == "True"
        assert conditions.get("NonStructuralSchema") is None


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ("smtpserver.spec", "The MTA's host name: greeting banner"),
        ("smtpserver.spec.throttling.providers.mxSuffixes", "MX host name suffixes"),
        ("ippool.spec.ptrTemplate", "EHLO / PTR host name per address"),
        ("warmupplan.spec.geometric.growthFactor", "Daily growth factor"),
        ("tenant.spec.quotas.perHour", "Most messages per hour"),
        ("campaign.spec.unsubscribe.oneClick", "RFC 8058"),
        ("warmupplan.status.conditions", "Ready is the summary"),
    ],
)
def test_kubectl_explain_prints_descriptions(crds, resource, expected):
    out = crds.kubectl("explain", resource).stdout
    assert expected in out


def test_examples_are_accepted_and_listed_by_category(crds):
    for path in sorted(EXAMPLES.glob("*.yaml")):
        result = apply(crds, path.read_text(), check=False)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
    listed = crds.kubectl("get", "smtpinfra", "-A").stdout
    for name in ("warmupplan.smtpinfra.com/standard", "warmupplan.smtpinfra.com/geometric",
                 "ippool.smtpinfra.com/transactional", "tenant.smtpinfra.com/acme",
                 "smtpserver.smtpinfra.com/outbound", "campaign.smtpinfra.com/november-newsletter"):
        assert name in listed, listed


@pytest.mark.parametrize(
    ("resource", "columns"),
    [
        ("smtpservers", ["NAME", "HOSTNAME", "REPLICAS", "AVAILABLE", "READY", "AGE"]),
        ("ippools", ["NAME", "ADDRESSES", "ASSIGNED", "WARMUP", "READY", "AGE"]),
        ("warmupplans", ["NAME", "DAYS", "FINAL-CAP", "READY", "AGE"]),
        ("tenants", ["NAME", "NAMESPACE", "PLAN", "STATE", "READY", "AGE"]),
        ("campaigns", ["NAME", "TENANT", "PHASE", "SENT", "READY", "AGE"]),
    ],
)
def test_printer_columns(crds, resource, columns):
    for path in sorted(EXAMPLES.glob("*.yaml")):
        apply(crds, path.read_text())
    header = crds.kubectl("get", resource, "-A").stdout.splitlines()[0].split()
    assert [c for c in header if c in columns] == columns, header
    wide = crds.kubectl("get", resource, "-A", "-o", "wide").stdout.splitlines()[0].split()
    assert "REASON" in wide


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    node: Any = doc
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value


def _del(doc: dict[str, Any], path: str) -> None:
    keys = path.split(".")
    node: Any = doc
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    del node[keys[-1]]


DELETE = object()

# (kind, {path: value or DELETE}, text the refusal must contain)
BAD: list[tuple[str, dict[str, Any], str]] = [
    # SmtpServer
    ("SmtpServer", {"spec.hostname": DELETE}, "spec.hostname: Required value"),
    ("SmtpServer", {"spec.hostname": "Not_A_Host"}, "spec.hostname: Invalid value"),
    ("SmtpServer", {"spec.replicas": -1}, "spec.replicas: Invalid value"),
    ("SmtpServer", {"spec.replicas": "two"}, "spec.replicas"),
    ("SmtpServer", {"spec.ipPools": []}, "spec.ipPools"),
    ("SmtpServer", {"spec.listeners.submission.port": 70000}, "spec.listeners.submission.port"),
    ("SmtpServer", {"spec.listeners.submission.port": 25}, "spec.listeners: submission, inbound and implicitTls "
                                                            "must use different ports"),
    ("SmtpServer", {"spec.tls.issuerRef": {"name": "letsencrypt"}}, "spec.tls: set exactly one of secretName or "
                                                                     "issuerRef"),
    ("SmtpServer", {"spec.tls": DELETE}, "spec.tls is required when the submission"),
    ("SmtpServer", {"spec.dkim.keys.0.algorithm": "rsa-sha1"}, "spec.dkim.keys[0].algorithm: Unsupported value"),
    ("SmtpServer", {"spec.dkim.keys.1.rsaKeySize": 2048}, "rsaKeySize applies only to algorithm rsa-sha256"),
    ("SmtpServer", {"spec.dns.provider": "rfc2136"}, "spec.dns.rfc2136 is required"),
    ("SmtpServer", {"spec.throttling.automation.1.maxMessageRate": DELETE}, "maxMessageRate is required when action "
                                                                             "is Throttle"),
    ("SmtpServer", {"spec.throttling.default.maxMessageRate": "fast"}, "spec.throttling.default.maxMessageRate"),
    ("SmtpServer", {"spec.throttling.automation.0.duration": "2 hours"}, "spec.throttling.automation[0].duration"),
    ("SmtpServer", {"spec.resources.requests.cpu": "lots"}, "spec.resources.requests.cpu"),
    ("SmtpServer", {"spec.hostnme": "typo.example.com"}, 'unknown field "spec.hostnme"'),
    ("SmtpServer", {"metadata.name": "a-name-that-is-much-too-long-for-a-statefulset-pod"}, "metadata.name"),
    # IpPool
    ("IpPool", {"spec.addresses": ["300.1.1.1"]}, "spec.addresses: Invalid value"),
    ("IpPool", {"spec.addresses": ["10.0.0.0/8"]}, "no larger than /24"),
    ("IpPool", {"spec.addresses": DELETE}, "spec.addresses: Required value"),
    ("IpPool", {"spec.ptrTemplate": "MTA.Example.com"}, "spec.ptrTemplate"),
    ("IpPool", {"spec.dnsbl.checkInterval": "hourly"}, "spec.dnsbl.checkInterval"),
    ("IpPool", {"spec.quarantine.minListings": 0}, "spec.quarantine.minListings"),
    # WarmupPlan
    ("WarmupPlan", {"spec.geometric": {"initialDailyCap": 1, "growthFactor": "2", "targetDailyCap": 9}},
     "set exactly one of stages or geometric"),
    ("WarmupPlan", {"spec.stages": DELETE}, "set exactly one of stages or geometric"),
    ("WarmupPlan", {"spec.stages": DELETE, "spec.geometric": {"initialDailyCap": 900, "growthFactor": "2",
                                                            "targetDailyCap": 800}},
     "spec.geometric.initialDailyCap must be below"),
    ("WarmupPlan", {"spec.stages.0.dailyCap": 0}, "spec.stages[0].dailyCap"),
    ("WarmupPlan", {"spec.stages": DELETE, "spec.geometric": {"initialDailyCap": 1, "growthFactor": "fast",
                                                            "targetDailyCap": 9}}, "spec.geometric.growthFactor"),
    ("WarmupPlan", {"spec.onGateFailure": "Panic"}, "spec.onGateFailure: Unsupported value"),
    ("WarmupPlan", {"spec.healthGates.maxComplaintRate": "150"}, "spec.healthGates.maxComplaintRate"),
    ("WarmupPlan", {"spec.providerCaps.0.provider": "hotmail"}, "spec.providerCaps[0].provider: Unsupported value"),
    ("WarmupPlan", {"spec.onGateFailure": "StepBack", "spec.stepBackDays": 0}, "spec.stepBackDays must be at least"),
    ("WarmupPlan", {"spec.healthGates.minCapUsage": "0"}, "spec.healthGates.minCapUsage must be above 0"),
    ("IpPool", {"spec.overflow": "Bounce"}, "spec.overflow: Unsupported value"),
    # Tenant
    ("Tenant", {"spec.senderDomains": DELETE}, "spec.senderDomains: Required value"),
    ("Tenant", {"spec.senderDomains": ["not a domain"]}, "spec.senderDomains[0]"),
    ("Tenant", {"spec.quotas.perHour": 500, "spec.quotas.perDay": 100}, "spec.quotas.perHour must not exceed"),
    ("Tenant", {"spec.plan": "Dedicated"}, "spec.ipPool is required when spec.plan is Dedicated"),
    ("Tenant", {"spec.displayName": DELETE}, "spec.displayName: Required value"),
    ("Tenant", {"spec.quotas.perDay": -5}, "spec.quotas.perDay"),
    # Campaign
    ("Campaign", {"spec.sender.address": "not-an-email"}, "spec.sender.address"),
    ("Campaign", {"spec.recipients.configMapRef": {"name": "list", "key": "csv"}},
     "spec.recipients: set exactly one of inline, configMapRef, secretRef or file"),
    ("Campaign", {"spec.templates": {}}, "spec.templates: set text, html or both"),
    ("Campaign", {"spec.subject": ""}, "spec.subject"),
    ("Campaign", {"spec.unsubscribe.url": "http://insecure.example.com/u"}, "spec.unsubscribe.url"),
    ("Campaign", {"spec.unsubscribe.url": DELETE}, "spec.unsubscribe.url is required for oneClick"),
    ("Campaign", {"spec.rate.messagesPerMinute": 0}, "spec.rate.messagesPerMinute"),
    ("Campaign", {"spec.startTime": "tomorrow"}, "spec.startTime"),
    ("Campaign", {"spec.postalAddress": DELETE}, "spec.postalAddress: Required value"),
    # Hostile input: nothing that ends or folds a header line reaches a header (issue 11)
    *[("Campaign", {"spec.subject": f"News{bad}Bcc: victim@example.net"}, "spec.subject must be a single line")
      for bad in ("\r\n", "\n", "\r", "\t", "\x7f", "\x1b", "\u2028")],
    ("Campaign", {"spec.sender.name": "ACME\r\nReply-To: thief@example.net"}, "spec.sender.name must be a single "
                                                                            "line"),
    ("Campaign", {"spec.sender.name": "ACME\x00"}, "spec.sender.name must be a single line"),
    ("Campaign", {"spec.unsubscribe.url": "https://u.example.com/x>\r\nBcc: victim@example.net"},
     "spec.unsubscribe.url"),
    ("Campaign", {"spec.unsubscribe.url": "https://u.example.com/a b"}, "spec.unsubscribe.url"),
    ("Campaign", {"spec.unsubscribe.url": "https://u.example.com/<x>"}, "spec.unsubscribe.url"),
    ("Campaign", {"spec.replyTo": "a@example.com\r\nBcc: victim@example.net"}, "spec.replyTo"),
    ("Campaign", {"spec.unsubscribe.mailto": "u@example.com\nBcc: victim@example.net"}, "spec.unsubscribe.mailto"),
    ("Campaign", {"spec.sender.address": "news@acme.example.com\r\nBcc: victim@example.net"},
     "spec.sender.address"),
    # Hostile input: a Tenant cannot claim a system namespace (issue 11)
    *[("Tenant", {"spec.namespace": ns}, "spec.namespace must not be default or a kube-* namespace")
      for ns in ("default", "kube-system", "kube-public", "kube-node-lease")],
]


def _bad_id(case: tuple[str, dict[str, Any], str]) -> str:
    kind, changes, _ = case
    return f"{kind}:{','.join(changes)}"


@pytest.mark.parametrize("case", BAD, ids=[_bad_id(c) for c in BAD])
def test_bad_manifest_is_refused_naming_the_field(crds, case):
    kind, changes, expected = case
    doc = copy.deepcopy(example(kind))
    doc["metadata"]["name"] = doc["metadata"]["name"] if "metadata.name" in changes else "bad-" + kind.lower()
    for path, value in changes.items():
        if value is DELETE:
            _del(doc, path)
        else:
            _set(doc, path, value)
    if doc["metadata"].get("namespace"):
        crds.kubectl("create", "namespace", doc["metadata"]["namespace"], check=False)
    result = apply(crds, doc, "--dry-run=server", check=False)
    assert result.returncode != 0, f"accepted: {yaml.safe_dump(doc)}"
    assert expected in result.stderr, result.stderr


IMMUTABLE: list[tuple[str, dict[str, Any], str]] = [
    ("SmtpServer", {"spec.spool.size": "20Gi"}, "spec.spool is immutable"),
    ("Tenant", {"spec.namespace": "other-namespace"}, "spec.namespace is immutable"),
    ("Campaign", {"spec.tenant": "someone-else"}, "spec.tenant is immutable"),
    ("Campaign", {"spec.serverRef": {"name": "other", "namespace": "default"}}, "spec.serverRef is immutable"),
]


@pytest.mark.parametrize("case", IMMUTABLE, ids=[_bad_id(c) for c in IMMUTABLE])
def test_changing_an_immutable_field_is_refused(crds, case):
    kind, changes, expected = case
    doc = copy.deepcopy(example(kind))
    doc["metadata"]["name"] = "immutable-" + kind.lower()
    if kind == "Tenant":
        doc["spec"]["namespace"] = "tenant-immutable"
    if doc["metadata"].get("namespace"):
        crds.kubectl("create", "namespace", doc["metadata"]["namespace"], check=False)
    apply(crds, doc)
    for path, value in changes.items():
        _set(doc, path, value)
    result = apply(crds, doc, check=False)
    resource = f"{kind.lower()}/{doc['metadata']['name']}"
    namespace = ["-n", doc["metadata"]["namespace"]] if doc["metadata"].get("namespace") else []
    crds.kubectl("delete", resource, *namespace, "--wait=false")  # leave no look-alike tenants behind
    assert result.returncode != 0, "immutable change accepted"
    assert expected in result.stderr, result.stderr


def test_header_fields_accept_ordinary_text(crds):
    """The header rules refuse control characters only: accents, emoji, quotes and templates pass."""
    doc = copy.deepcopy(example("Campaign"))
    doc["metadata"]["name"] = "unicode-header-fields"
    doc["spec"]["subject"] = "Ünïcödé news 📬 for {{ first_name }}, \"quoted\" & <bracketed>"
    doc["spec"]["sender"]["name"] = "ACME, Inc. — Newsroom"
    doc["spec"]["unsubscribe"]["url"] = "https://u.example.com/unsub?list=news&id=%C3%A9#top"
    crds.kubectl("create", "namespace", doc["metadata"]["namespace"], check=False)
    result = apply(crds, doc, "--dry-run=server", check=False)
    assert result.returncode == 0, result.stderr


def test_tenant_namespace_may_start_with_kube_without_the_dash(crds):
    doc = copy.deepcopy(example("Tenant"))
    doc["metadata"]["name"] = "kubeflow-team"
    doc["spec"]["namespace"] = "kubeflow-mail"
    result = apply(crds, doc, "--dry-run=server", check=False)
    assert result.returncode == 0, result.stderr
