"""End to end: the operator publishes an SmtpServer's DNS records into a real Knot server (RFC 2136 + TSIG).

The operator, the local pod runner (real MTA pods, so Ready means pods and DNS) and a Knot
server with a forward zone (example.test) and the reverse zone of the pool addresses
(10.0.127.in-addr.arpa). What the operator wrote is read back with TSIG-signed AXFR and
checked with third-party tools: pyspf, checkdmarc and dkimpy resolve from Knot. Mail submitted
to the MTA pods reaches Postfix's smtp-sink (MX from Knot) and its DKIM signature is verified
with the key Knot answers; the MTA-STS policy is fetched from the pods over HTTP and HTTPS. The
tests of this module run in order and share the servers they create, so they stay one module (over
500 lines): split, each part would start its own Knot, operator and MTA pods.
"""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import checkdmarc.dmarc
import checkdmarc.spf
import dkim
import dns.resolver
import pytest
import spf
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smtpinfra_operator.dns import Record, Rfc2136Provider, mta_sts_policy_id
from smtpinfra_operator.dns.ownership import owners
from smtpinfra_operator.dns.verify import resolver_for
from tests.dns.knot import FORWARD_ZONE, KEY_NAME, KEY_SECRET, REVERSE_ZONE, KnotServer
from tests.kube import OperatorProcess, apply, condition, find, get, operator_kubeconfig, wait_for
from tests.mta.conftest import free_port, https_get

pytestmark = [pytest.mark.dns, pytest.mark.e2e, pytest.mark.operator]

NS = "dns-e2e"
POOL = ["127.0.10.61", "127.0.10.62", "127.0.10.63"]
DOMAIN = f"dnsacme.{FORWARD_ZONE}"
NEWS = f"news.{DOMAIN}"
CLASH_DOMAIN = f"conflict.{FORWARD_ZONE}"  # knot.py puts a foreign _dmarc TXT there
SWITCH_DOMAIN = f"switch.{FORWARD_ZONE}"
RCPT_DOMAIN = f"rcpt-dns.{FORWARD_ZONE}"  # its MX (set up as a foreign record) is the smtp-sink
SINK_ADDR = "127.0.10.242"
SERVICE_IP = "192.0.2.25"  # an external IP of the MTA's Services (the API server refuses loopback ones)
TSIG_NAME = "smtp-infra.tsig.test."  # the API wants a multi-label key name
ENDPOINT_CRD = Path(__file__).parents[1] / "dns" / "dnsendpoints.externaldns.k8s.io.yaml"


class TsigKnot(KnotServer):
    """knot.py's server with a second, multi-label TSIG key the SmtpServer uses."""

    def write_config(self) -> None:
        super().write_config()
        conf = self.directory / "knot.conf"
        text = conf.read_text()
        key = f"  - id: {TSIG_NAME}\n    algorithm: hmac-sha256\n    secret: {KEY_SECRET}\n"
        text = text.replace("acl:\n", key + "acl:\n")
        text = text.replace(f"    key: {KEY_NAME}\n", f"    key: [{KEY_NAME}, {TSIG_NAME}]\n")
        conf.write_text(text)


@pytest.fixture(scope="module")
def knot() -> Iterator[TsigKnot]:
    with tempfile.TemporaryDirectory() as d:
        server = TsigKnot(Path(d))
        server.start()
        server.foreign_update(FORWARD_ZONE, add=[(RCPT_DOMAIN, 60, "MX", f"10 sink.{RCPT_DOMAIN}."),
                                                 (f"sink.{RCPT_DOMAIN}", 60, "A", SINK_ADDR)])
        try:
            yield server
        finally:
            server.stop()


def without_endpoint_crd(cp: Any) -> None:
    """Remove the DNSEndpoint CRD a previous run on a reused cluster installed, unless others use it."""
    if find(cp, "crd", "dnsendpoints.externaldns.k8s.io") is None:
        return
    cp.kubectl("-n", NS, "delete", "smtpserver", "edns", "--ignore-not-found", "--timeout=60s")
    items = json.loads(cp.kubectl("get", "dnsendpoints.externaldns.k8s.io", "-A", "-o", "json").stdout)["items"]
    foreign = [f"{e['metadata']['namespace']}/{e['metadata']['name']}" for e in items
               if e["metadata"]["namespace"] != NS]
    assert not foreign, f"this cluster uses external-dns ({foreign}): run on a cluster of the tests' own"
    cp.kubectl("delete", "crd", "dnsendpoints.externaldns.k8s.io", "--timeout=60s")
    wait_for(lambda: find(cp, "crd", "dnsendpoints.externaldns.k8s.io") is None, timeout=60,
             what="DNSEndpoint CRD gone")


@pytest.fixture(scope="module")
def dns_operator(crds: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator as the chart's ServiceAccount (not cluster-admin), retrying a blocked deletion every 2 s.

    DNSEndpoint writes, the finalizer and the TSIG Secret reads thus run under the chart's ClusterRole.
    """
    # the external-dns test starts without the DNSEndpoint CRD; a reused cluster may have it from a previous
    # run, so it goes before the operator starts (the operator remembers a kind it has seen served)
    without_endpoint_crd(crds)
    directory = tmp_path_factory.mktemp("operator")
    proc = OperatorProcess(crds, directory / "operator.log", env={"SMTP_INFRA_DNS_DELETE_RETRY_SECONDS": "2"},
                           kubeconfig=operator_kubeconfig(crds, directory / "kubeconfig"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def forbidden(log: str) -> list[str]:
    """Log lines where the API server refused the operator something (a verb the chart's role lacks)."""
    return [line for line in log.splitlines() if "Forbidden" in line or "forbidden" in line]


@pytest.fixture(autouse=True)
def never_forbidden(dns_operator: OperatorProcess) -> Iterator[None]:
    """Each test fails (at teardown) if the operator was refused anything while it ran."""
    before = len(dns_operator.log())
    yield
    refused = forbidden(dns_operator.log()[before:])
    assert refused == [], "the chart's ClusterRole lacks a permission:\n" + "\n".join(refused[:5])


@pytest.fixture(scope="module")
def mta_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the MTA's host name and mta-sts.<return-path domain> (RFC 8461 3.3)."""
    d = tmp_path_factory.mktemp("mta-cert")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"smtp.{DOMAIN}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"smtp.{DOMAIN}"),
                                                        x509.DNSName(f"mta-sts.bounces.{DOMAIN}")]), critical=False)
            .sign(key, hashes.SHA256()))
    (d / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return d / "tls.crt", d / "tls.key"


@pytest.fixture(scope="module")
def sink_port() -> int:
    """The port of the smtp-sink the MTA delivers to (the sink itself starts in the test that mails)."""
    return free_port(SINK_ADDR)


@pytest.fixture(scope="module")
def cp(dns_operator: OperatorProcess, pod_runner: Any, knot: TsigKnot, mta_cert: tuple[Path, Path]) -> Any:
    """Namespace, TLS and TSIG Secrets, the pool and two tenants."""
    cp = dns_operator.cp
    cp.kubectl("create", "namespace", NS, check=False)
    cert, key = mta_cert
    apply(cp, {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": "mta-tls", "namespace": NS},
               "data": {"tls.crt": base64.b64encode(cert.read_bytes()).decode(),
                        "tls.key": base64.b64encode(key.read_bytes()).decode()}})
    cp.kubectl("-n", NS, "create", "secret", "generic", "tsig", f"--from-literal=secret={KEY_SECRET}", check=False)
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": "dns-pool"},
               "spec": {"addresses": POOL, "ptrTemplate": "out-{index}.dnsacme.example.test"}})
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Tenant",
               "metadata": {"name": "dns-acme", "labels": {"tier": "dns"}},
               "spec": {"displayName": "ACME DNS", "senderDomains": [DOMAIN, NEWS]}})
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Tenant",
               "metadata": {"name": "dns-clash", "labels": {"tier": "dns-clash"}},
               "spec": {"displayName": "Clash", "senderDomains": [CLASH_DOMAIN]}})
    cp.kubectl("wait", "--for=condition=Ready", "tenant/dns-acme", "tenant/dns-clash", "--timeout=60s")
    return cp


def manifest(name: str, knot: KnotServer, *, replicas: int = 0, tier: str = "dns", provider: str = "rfc2136",
             selectors: tuple[str, ...] = ("rsa1",), domain: str = DOMAIN, sink_port: int | None = None,
             ) -> dict[str, Any]:
    """An SmtpServer for `domain` (MTA-STS on); with `sink_port` it delivers via Knot's MX to the smtp-sink."""
    dns_spec: dict[str, Any] = {"provider": provider, "ttl": 60, "mtaSts": True,
                                "dmarc": {"policy": "quarantine", "aggregateReportTo": [f"dmarc@{domain}"]}}
    if provider == "rfc2136":
        dns_spec["rfc2136"] = {"server": knot.address, "port": knot.port, "zone": FORWARD_ZONE,
                               "reverseZones": [REVERSE_ZONE], "tsigSecretRef": {"name": "tsig", "key": "secret"},
                               "tsigKeyName": TSIG_NAME.rstrip(".")}
    spec: dict[str, Any] = {
        "hostname": f"smtp.{domain}", "replicas": replicas, "ipPools": ["dns-pool"],
        "returnPathDomain": f"bounces.{domain}", "tls": {"secretName": "mta-tls"},
        "dkim": {"keys": [{"domain": domain, "selector": s} for s in selectors]},
        "tenantSelector": {"matchLabels": {"tier": tier}}, "dns": dns_spec,
    }
    if sink_port is not None:
        spec["delivery"] = {"resolver": {"address": knot.address, "port": knot.port}, "remotePort": sink_port}
    return {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "SmtpServer", "metadata": {"name": name, "namespace": NS},
            "spec": spec}


def zone(knot: KnotServer) -> list[Record]:
    """Everything in both zones, by TSIG-signed AXFR."""
    return Rfc2136Provider(knot.address, [FORWARD_ZONE, REVERSE_ZONE], key_name=KEY_NAME, secret=KEY_SECRET,
                           port=knot.port).read()


def at(knot: KnotServer, name: str, rtype: str) -> Record | None:
    return next((r for r in zone(knot) if r.key == (name, rtype)), None)


def owned_by(knot: KnotServer, owner: str) -> set[tuple[str, str]]:
    return {k for k, o in owners(zone(knot)).items() if o == owner}


def dns_ready(cp: Any, name: str) -> dict[str, Any] | None:
    obj = find(cp, "smtpserver", name, NS)
    return condition(obj, "DnsReady") if obj else None


def wait_dns(cp: Any, name: str, status: str, reason: str, timeout: float = 90) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = find(cp, "smtpserver", name, NS)
        c = condition(obj, "DnsReady") if obj else None
        # The condition must describe the current spec, not the one before an edit.
        current = obj is not None and c is not None and c.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if current and c and c["status"] == status and c["reason"] == reason else None
    return wait_for(check, timeout=timeout, what=f"{name} DnsReady={status} {reason}: {dns_ready(cp, name)}")


def records_status(obj: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["name"], r["type"]): r for r in obj["status"]["dns"]["records"]}


@pytest.fixture
def knot_resolver(knot: KnotServer) -> Iterator[dns.resolver.Resolver]:
    """dnspython's default resolver (what pyspf uses) pointed at Knot."""
    saved = dns.resolver.default_resolver
    dns.resolver.default_resolver = resolver = resolver_for(knot.nameserver)
    try:
        yield resolver
    finally:
        dns.resolver.default_resolver = saved


def test_provider_none_reports_the_records_to_publish(cp: Any, knot: KnotServer) -> None:
    apply(cp, manifest("plain", knot, provider="none"))
    obj = wait_dns(cp, "plain", "True", "NotManaged")
    records = records_status(obj)
    assert {r["state"] for r in records.values()} == {"Required"}
    assert records[(DOMAIN, "TXT")]["values"] == ['"v=spf1 -all"']  # no replicas: nothing may send
    assert records[(f"_dmarc.{DOMAIN}", "TXT")]["values"][0].startswith('"v=DMARC1; p=quarantine')
    assert records[(f"bounces.{DOMAIN}", "MX")]["values"] == [f"10 smtp.{DOMAIN}."]
    assert (f"rsa1._domainkey.{DOMAIN}", "TXT") in records
    assert condition(obj, "Ready")["status"] == "True"
    assert not obj["metadata"].get("finalizers"), "only rfc2136 servers get a finalizer"
    assert owned_by(knot, f"{NS}/plain") == set(), "provider none writes nothing"


def test_rfc2136_publishes_and_verifies(cp: Any, knot: KnotServer, knot_resolver: dns.resolver.Resolver,
                                        sink_port: int) -> None:
    apply(cp, manifest("mx", knot, replicas=2, sink_port=sink_port))
    result = cp.kubectl("-n", NS, "wait", "--for=condition=Ready", "smtpserver/mx", "--timeout=120s", check=False)
    obj = get(cp, "smtpserver", "mx", NS)
    assert result.returncode == 0, obj.get("status")
    assert condition(obj, "DnsReady")["status"] == "True" and condition(obj, "DnsReady")["reason"] == "Verified"
    assert obj["metadata"]["finalizers"] == ["smtpinfra.com/finalizer"]
    sending = {a["address"]: a["ehloName"] for a in obj["status"]["sendingAddresses"]}
    assert set(sending) == set(POOL[:2])
    records = records_status(obj)
    assert {r["state"] for r in records.values()} == {"Verified"}
    assert {t for _, t in records} == {"A", "PTR", "TXT", "MX"}
    for address, ehlo in sending.items():
        ptr = at(knot, f"{address.split('.')[-1]}.{REVERSE_ZONE}", "PTR")
        assert ptr is not None and ptr.values == (f"{ehlo}.",)
        assert at(knot, ehlo, "A").values == (address,)
        assert records[(ptr.name, "PTR")]["state"] == "Verified"
    assert at(knot, f"bounces.{DOMAIN}", "MX").values == (f"10 smtp.{DOMAIN}.",)
    assert owned_by(knot, f"{NS}/mx") == set(records)
    # third-party checkers resolve from Knot
    for domain in (DOMAIN, NEWS, f"bounces.{DOMAIN}"):
        for address, ehlo in sending.items():
            assert spf.check2(i=address, s=f"bounce@{domain}", h=ehlo)[0] == "pass", (domain, address)
        assert spf.check2(i="127.0.10.250", s=f"bounce@{domain}", h="elsewhere.test")[0] == "fail"
        assert checkdmarc.spf.check_spf(domain, resolver=knot_resolver)["valid"]
    for domain in (DOMAIN, NEWS):
        dmarc = checkdmarc.dmarc.check_dmarc(domain, resolver=knot_resolver)
        assert dmarc["valid"] and dmarc["tags"]["p"]["value"] == "quarantine"
    # dkimpy verifies a signature made with the key in the operator's Secret, key taken from Knot
    secret = next(s for s in json.loads(cp.kubectl("-n", NS, "get", "secrets", "-o", "json").stdout)["items"]
                  if s["metadata"]["name"].startswith("mx-dkim-rsa1-"))
    private = base64.b64decode(secret["data"]["private.pem"])
    message = f"From: a@{DOMAIN}\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nHello.\r\n".encode()
    signed = dkim.sign(message, b"rsa1", DOMAIN.encode(), private, include_headers=[b"from", b"subject"]) + message

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            return b"".join(next(iter(knot_resolver.resolve(name.decode(), "TXT"))).strings)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
    assert dkim.verify(signed, dnsfunc=dnsfunc)
    # FCrDNS per pool address lands in the IpPool's status
    wait_for(lambda: {a["address"]: a.get("ptrOk") for a in get(cp, "ippool", "dns-pool")["status"]["addresses"]}
             == {POOL[0]: True, POOL[1]: True, POOL[2]: None}, timeout=30, what="ptrOk in the pool status")


def pods(cp: Any, server: str) -> dict[str, str]:
    """Pod name → pod IP (Services over pod-runner pods have no endpoints: connect to pods directly)."""
    out = json.loads(cp.kubectl("-n", NS, "get", "pods", "-l", f"app.kubernetes.io/instance={server}",
                                "-o", "json").stdout)
    return {p["metadata"]["name"]: p["status"].get("podIP", "") for p in out["items"]}


def txt_from(resolver: dns.resolver.Resolver) -> Any:
    """dkimpy's dnsfunc: the TXT record as Knot answers it (not from the operator's Secret)."""
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            return b"".join(next(iter(resolver.resolve(name.decode(), "TXT"))).strings)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
    return dnsfunc


def http_get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers["Content-Type"], r.read()


def test_mail_signed_by_the_mta_verifies_with_the_key_in_dns(cp: Any, knot: KnotServer,
                                                              knot_resolver: dns.resolver.Resolver,
                                                              sink_factory: Any, sink_port: int) -> None:
    """swaks → MTA pod (operator's credentials) → Knot MX → smtp-sink; dkimpy resolves the key from Knot."""
    cp.kubectl("-n", NS, "wait", "--for=condition=Ready", "smtpserver/mx", "--timeout=120s")
    sink = sink_factory(addr=SINK_ADDR, port=sink_port)
    credentials = get(cp, "secret", "smtp-credentials", "tenant-dns-acme")["data"]
    user, password = (base64.b64decode(credentials[k]).decode() for k in ("username", "password"))
    ip = pods(cp, "mx")["mx-0"]
    sender = f"news@{DOMAIN}"
    result = subprocess.run(
        ["swaks", "--server", f"{ip}:587", "--tls", "--auth", "PLAIN", "--auth-user", user, "--auth-password",
         password, "--from", sender, "--to", f"someone@{RCPT_DOMAIN}", "--h-From", sender,
         "--h-Subject", "signed by the MTA", "--timeout", "20"], capture_output=True, text=True, timeout=60)
    assert "250 2.0.0" in result.stdout, result.stdout + result.stderr
    [message] = sink.wait_messages(1, timeout=90)
    replica0 = next(a for a in get(cp, "smtpserver", "mx", NS)["status"]["sendingAddresses"] if a["replica"] == 0)
    assert (message.client_addr, message.helo) == (replica0["address"], replica0["ehloName"])
    assert message.content.count(b"DKIM-Signature:") == 1
    signature = message.content.split(b"DKIM-Signature:", 1)[1].split(b"\r\n\r\n", 1)[0]
    assert b"d=" + DOMAIN.encode() in signature and b"s=rsa1" in signature
    # the key comes from Knot (published by the operator), not from the Secret
    lookups: list[bytes] = []
    resolve = txt_from(knot_resolver)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        lookups.append(name)
        return resolve(name, timeout)
    assert dkim.verify(message.content, dnsfunc=dnsfunc)
    assert lookups == [f"rsa1._domainkey.{DOMAIN}.".encode()]
    assert not dkim.verify(message.content.replace(b"signed by the MTA", b"signed by someone"), dnsfunc=dnsfunc)


def test_mta_serves_the_mta_sts_policy_whose_id_is_in_dns(cp: Any, knot: KnotServer,
                                                           knot_resolver: dns.resolver.Resolver,
                                                           mta_cert: tuple[Path, Path]) -> None:
    """RFC 8461: _mta-sts TXT id = id of the policy every pod serves over HTTP and HTTPS (mta-sts.<domain>)."""
    policy_domain = f"bounces.{DOMAIN}"
    txt = b"".join(next(iter(knot_resolver.resolve(f"_mta-sts.{policy_domain}", "TXT"))).strings).decode()
    assert txt.startswith("v=STSv1; id=")
    published_id = txt.removeprefix("v=STSv1; id=")
    mx = [r.exchange.to_text().rstrip(".") for r in knot_resolver.resolve(policy_domain, "MX")]
    assert mx == [f"smtp.{DOMAIN}"]
    ips = pods(cp, "mx")
    assert len(ips) == 2
    for pod, ip in ips.items():
        status, ctype, body = http_get(f"http://{ip}:8080/.well-known/mta-sts.txt")
        assert (status, ctype) == (200, "text/plain"), pod
        assert mta_sts_policy_id(body.decode()) == published_id, pod
        fields = [line.split(": ", 1) for line in body.decode().splitlines()]
        assert fields == [["version", "STSv1"], ["mode", "enforce"], ["mx", mx[0]], ["max_age", "604800"]]
        # HTTPS with the MTA's certificate, verified for mta-sts.<domain> as a sending MTA would
        assert https_get(ip, 8443, "/.well-known/mta-sts.txt", mta_cert[0], f"mta-sts.{policy_domain}") \
            == (200, "text/plain", body), pod
        assert https_get(ip, 8443, "/metrics", mta_cert[0], f"mta-sts.{policy_domain}")[0] == 404
    for service in ("mx-inbound", "mx-submission"):
        ports = get(cp, "service", service, NS)["spec"]["ports"]
        assert {"name": "mta-sts", "port": 443, "protocol": "TCP", "targetPort": "mta-sts"} in ports, service
    # mta-sts.<domain> gets the A records of the MTA's host name: the Services' external addresses
    assert at(knot, f"mta-sts.{policy_domain}", "A") is None  # none yet
    cp.kubectl("-n", NS, "patch", "service", "mx-inbound", "--type=merge", "-p",
               json.dumps({"spec": {"externalIPs": [SERVICE_IP]}}))
    wait_for(lambda: (r := at(knot, f"mta-sts.{policy_domain}", "A")) and r.values == (SERVICE_IP,), timeout=60,
             what="A record of mta-sts.<domain>")
    assert at(knot, f"smtp.{DOMAIN}", "A").values == (SERVICE_IP,)
    assert {r.to_text() for r in knot_resolver.resolve(f"mta-sts.{policy_domain}", "A")} == {SERVICE_IP}
    obj = wait_dns(cp, "mx", "True", "Verified")
    assert records_status(obj)[(f"mta-sts.{policy_domain}", "A")]["state"] == "Verified"


def test_foreign_record_is_left_untouched_and_reported(cp: Any, knot: KnotServer) -> None:
    foreign = at(knot, f"_dmarc.{CLASH_DOMAIN}", "TXT")
    assert foreign is not None
    # its own names throughout (host, return path, DKIM): the only record it shares is the foreign _dmarc
    apply(cp, manifest("clash", knot, tier="dns-clash", domain=CLASH_DOMAIN))
    obj = wait_dns(cp, "clash", "False", "DnsConflict")
    dns_cond = condition(obj, "DnsReady")
    assert f"_dmarc.{CLASH_DOMAIN}" in dns_cond["message"] and "not managed by smtp-infra" in dns_cond["message"]
    ready = condition(obj, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "DnsConflict"
    assert f"_dmarc.{CLASH_DOMAIN}" in ready["message"]
    assert records_status(obj)[(f"_dmarc.{CLASH_DOMAIN}", "TXT")]["state"] == "Conflict"
    assert at(knot, f"_dmarc.{CLASH_DOMAIN}", "TXT") == foreign, "the foreign record is untouched"
    # everything else of the server is published
    assert at(knot, CLASH_DOMAIN, "TXT").texts() == ["v=spf1 -all"]
    assert (f"_dmarc.{CLASH_DOMAIN}", "TXT") not in owned_by(knot, f"{NS}/clash")


def test_dkim_rotation_after_operator_restart_publishes_both_selectors(cp: Any, knot: KnotServer,
                                                                         dns_operator: OperatorProcess) -> None:
    before = at(knot, f"rsa1._domainkey.{DOMAIN}", "TXT")
    assert before is not None
    dns_operator.stop()
    apply(cp, manifest("mx", knot, replicas=2, selectors=("rsa1", "rsa2")))
    dns_operator.start()
    wait_for(lambda: at(knot, f"rsa2._domainkey.{DOMAIN}", "TXT"), timeout=90, what="second selector published")
    obj = wait_dns(cp, "mx", "True", "Verified")
    records = records_status(obj)
    for selector in ("rsa1", "rsa2"):
        assert records[(f"{selector}._domainkey.{DOMAIN}", "TXT")]["state"] == "Verified"
    assert at(knot, f"rsa1._domainkey.{DOMAIN}", "TXT") == before, "the old selector stays during the rotation"
    assert owned_by(knot, f"{NS}/mx") == set(records), "a restart neither loses nor duplicates ownership"


def test_scale_down_removes_the_retired_address(cp: Any, knot: KnotServer,
                                                knot_resolver: dns.resolver.Resolver) -> None:
    retired = f"{POOL[1].split('.')[-1]}.{REVERSE_ZONE}"
    # first the records of the second replica exist (two replicas published them), then they go
    apply(cp, manifest("mx", knot, replicas=2, selectors=("rsa1", "rsa2")))
    wait_for(lambda: at(knot, retired, "PTR") and at(knot, f"out-1.{DOMAIN}", "A"), timeout=90,
             what="the second replica's PTR and A published")
    assert at(knot, f"out-1.{DOMAIN}", "A").values == (POOL[1],)
    assert at(knot, retired, "PTR").values == (f"out-1.{DOMAIN}.",)
    apply(cp, manifest("mx", knot, replicas=1, selectors=("rsa1", "rsa2")))
    # the reverse and the forward zone are two updates: wait for both
    wait_for(lambda: at(knot, retired, "PTR") is None and at(knot, f"out-1.{DOMAIN}", "A") is None, timeout=90,
             what="retired PTR and A removed")
    assert at(knot, f"out-0.{DOMAIN}", "A").values == (POOL[0],)
    wait_for(lambda: at(knot, DOMAIN, "TXT").texts() == [f"v=spf1 ip4:{POOL[0]} -all"],
             timeout=30, what="SPF without the retired address")
    assert spf.check2(i=POOL[1], s=f"x@{DOMAIN}", h=f"out-1.{DOMAIN}")[0] == "fail"
    assert spf.check2(i=POOL[0], s=f"x@{DOMAIN}", h=f"out-0.{DOMAIN}")[0] == "pass"
    obj = wait_dns(cp, "mx", "True", "Verified")
    assert (retired, "PTR") not in records_status(obj)
    wait_for(lambda: {a["address"]: a.get("ptrOk") for a in get(cp, "ippool", "dns-pool")["status"]["addresses"]}
             [POOL[1]] is False, timeout=30, what="retired address ptrOk false")


def test_deleting_the_server_removes_its_records_only(cp: Any, knot: KnotServer) -> None:
    assert owned_by(knot, f"{NS}/mx")
    clash_before = owned_by(knot, f"{NS}/clash")
    cp.kubectl("-n", NS, "delete", "smtpserver", "mx", "--timeout=60s")
    assert find(cp, "smtpserver", "mx", NS) is None
    assert owned_by(knot, f"{NS}/mx") == set()
    assert at(knot, f"rsa1._domainkey.{DOMAIN}", "TXT") is None and at(knot, DOMAIN, "TXT") is None
    assert at(knot, f"www.{FORWARD_ZONE}", "A") is not None and at(knot, f"200.{REVERSE_ZONE}", "PTR") is not None
    assert at(knot, f"_dmarc.{CLASH_DOMAIN}", "TXT") is not None
    assert owned_by(knot, f"{NS}/clash") == clash_before, "another server's records stay"


def test_deletion_waits_while_the_dns_server_is_down(cp: Any, knot: KnotServer) -> None:
    assert owned_by(knot, f"{NS}/clash")
    knot.stop()
    try:
        cp.kubectl("-n", NS, "delete", "smtpserver", "clash", "--wait=false")
        obj = wait_dns(cp, "clash", "False", "DnsCleanupDelayed", timeout=60)
        message = condition(obj, "DnsReady")["message"]
        assert f"{knot.address}:{knot.port}" in message and "connection refused" in message, message
        assert condition(obj, "Ready")["reason"] == "DnsCleanupDelayed"
        events = cp.kubectl("-n", NS, "get", "events", "--field-selector", "involvedObject.name=clash",
                            "-o", "json").stdout
        assert "DnsCleanupDelayed" in events
        time.sleep(5)
        assert find(cp, "smtpserver", "clash", NS) is not None, "deletion must wait for the DNS server"
    finally:
        knot.start()
    wait_for(lambda: find(cp, "smtpserver", "clash", NS) is None, timeout=60, what="deletion completes")
    assert owned_by(knot, f"{NS}/clash") == set()
    assert at(knot, f"_dmarc.{CLASH_DOMAIN}", "TXT") is not None, "the foreign record stays"


def test_external_dns_gets_a_dns_endpoint(cp: Any, knot: KnotServer) -> None:
    """Not installed yet (also on a reused cluster: see dns_operator): reported; once the CRD exists, written."""
    assert find(cp, "crd", "dnsendpoints.externaldns.k8s.io") is None
    apply(cp, manifest("edns", knot, provider="external-dns"))
    obj = wait_dns(cp, "edns", "False", "ExternalDnsNotInstalled")
    assert condition(obj, "Ready")["reason"] == "ExternalDnsNotInstalled"
    cp.kubectl("apply", "--server-side", "-f", str(ENDPOINT_CRD))
    # (kubectl wait fails on a CRD whose status has no conditions yet: poll instead)
    wait_for(lambda: (c := condition(get(cp, "crd", "dnsendpoints.externaldns.k8s.io"), "Established"))
             and c["status"] == "True", timeout=60, what="DNSEndpoint CRD established")
    obj = wait_dns(cp, "edns", "False", "WaitingForExternalDns")
    endpoint = get(cp, "dnsendpoints.externaldns.k8s.io", "edns-dns", NS)
    assert endpoint["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "smtp-infra",
                                              "smtpinfra.com/smtp-server": "edns"}
    [ref] = endpoint["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"]) == ("SmtpServer", "edns", obj["metadata"]["uid"])
    eps = {(e["dnsName"], e["recordType"]): e for e in endpoint["spec"]["endpoints"]}
    assert eps[(DOMAIN, "TXT")]["targets"] == ["v=spf1 -all"]
    assert eps[(f"bounces.{DOMAIN}", "MX")]["targets"] == [f"10 smtp.{DOMAIN}"]
    assert eps[(f"rsa1._domainkey.{DOMAIN}", "TXT")]["targets"][0].startswith("v=DKIM1; k=rsa; p=")
    assert eps[(f"_dmarc.{NEWS}", "TXT")]["targets"][0].startswith("v=DMARC1; p=quarantine")
    records = records_status(obj)
    assert {k for k, r in records.items() if r["state"] == "Pending"} == set(eps)
    assert not obj["metadata"].get("finalizers")
    # external-dns marks what it processed by status.observedGeneration; act as it would
    cp.kubectl("-n", NS, "patch", "dnsendpoints.externaldns.k8s.io", "edns-dns", "--subresource=status",
               "--type=merge", "-p", yaml.safe_dump({"status": {"observedGeneration":
                                                                endpoint["metadata"]["generation"]}}))
    obj = wait_dns(cp, "edns", "True", "Published")
    assert condition(obj, "Ready")["status"] == "True"
    assert {r["state"] for r in records_status(obj).values()} == {"Published"}


def test_switching_the_provider_away_from_rfc2136_removes_our_records(cp: Any, knot: KnotServer) -> None:
    """status.dns.rfc2136 remembers where our records live; leaving rfc2136 removes them there (and only them).

    While the DNS server is down the records (and the finalizer) are kept and DnsReady says why;
    switching back publishes everything again.
    """
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Tenant",
               "metadata": {"name": "dns-switch", "labels": {"tier": "dns-switch"}},
               "spec": {"displayName": "Switch", "senderDomains": [SWITCH_DOMAIN]}})
    cp.kubectl("wait", "--for=condition=Ready", "tenant/dns-switch", "--timeout=60s")
    owner = f"{NS}/switch"
    apply(cp, manifest("switch", knot, tier="dns-switch", domain=SWITCH_DOMAIN))
    obj = wait_dns(cp, "switch", "True", "Verified")
    ours = owned_by(knot, owner)
    assert (SWITCH_DOMAIN, "TXT") in ours and (f"_mta-sts.bounces.{SWITCH_DOMAIN}", "TXT") in ours
    assert obj["status"]["dns"]["rfc2136"]["server"] == knot.address
    assert obj["metadata"]["finalizers"] == ["smtpinfra.com/finalizer"]
    others = {k: o for k, o in owners(zone(knot)).items() if o != owner}

    # to provider none while Knot is down: nothing is lost track of
    knot.stop()
    try:
        apply(cp, manifest("switch", knot, tier="dns-switch", domain=SWITCH_DOMAIN, provider="none"))
        obj = wait_dns(cp, "switch", "False", "DnsCleanupDelayed", timeout=60)
        message = condition(obj, "DnsReady")["message"]
        assert f"cannot remove the records of {owner}" in message and f"{knot.address}:{knot.port}" in message
        assert obj["status"]["dns"]["rfc2136"]["server"] == knot.address
        assert obj["metadata"]["finalizers"] == ["smtpinfra.com/finalizer"], "records still exist: keep the finalizer"
    finally:
        knot.start()
    obj = wait_dns(cp, "switch", "True", "NotManaged")
    assert owned_by(knot, owner) == set()
    assert at(knot, SWITCH_DOMAIN, "TXT") is None and at(knot, f"rsa1._domainkey.{SWITCH_DOMAIN}", "TXT") is None
    assert {k: o for k, o in owners(zone(knot)).items() if o != owner} == others, "nobody else's records changed"
    assert "rfc2136" not in obj["status"]["dns"]
    assert {r["state"] for r in records_status(obj).values()} == {"Required"}
    wait_for(lambda: not get(cp, "smtpserver", "switch", NS)["metadata"].get("finalizers"), timeout=30,
             what="finalizer removed once nothing is left in DNS")
    events = cp.kubectl("-n", NS, "get", "events", "--field-selector", "involvedObject.name=switch",
                        "-o", "json").stdout
    assert "DnsRecordsRemoved" in events

    # and back: published again (no stale "Verified" from before the switch)
    apply(cp, manifest("switch", knot, tier="dns-switch", domain=SWITCH_DOMAIN))
    wait_dns(cp, "switch", "True", "Verified")
    assert owned_by(knot, owner) == ours
    wait_for(lambda: get(cp, "smtpserver", "switch", NS)["metadata"].get("finalizers") == ["smtpinfra.com/finalizer"],
             timeout=30, what="finalizer back")
    cp.kubectl("-n", NS, "delete", "smtpserver", "switch", "--timeout=60s")
    assert owned_by(knot, owner) == set()
