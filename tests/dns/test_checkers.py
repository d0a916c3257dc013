"""Third-party checkers accept what we publish, resolved from the real Knot server.

checkdmarc validates SPF/DMARC/MTA-STS/TLS-RPT syntax, pyspf evaluates SPF for real source
addresses, dkimpy verifies signatures with the key it looks up in DNS; verify() and fcrdns()
are checked against the same data.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import checkdmarc.dmarc
import checkdmarc.mta_sts
import checkdmarc.smtp_tls_reporting
import checkdmarc.spf
import dkim
import dns.resolver
import pytest
import spf
from cryptography.hazmat.primitives import serialization

from smtpinfra_api.v1alpha1 import DkimAlgorithm
from smtpinfra_operator.dns import (
    DkimPublicKey,
    DnsInputs,
    Record,
    Rfc2136Provider,
    VerifyState,
    build_records,
    fcrdns,
    mta_sts_policy_text,
    sync,
    verify,
)
from smtpinfra_operator.dns.verify import resolver_for

from .knot import FORWARD_ZONE, KEY_NAME, KEY_SECRET, REVERSE_ZONE, KnotServer, free_port
from .scenario import ip, scenario

pytestmark = pytest.mark.dns

POOL = [11, 12, 13]
BASE = "chk.example.test"
DOMAINS = [BASE, f"news.{BASE}", f"bounces.{BASE}"]


@dataclass
class Published:
    inputs: DnsInputs
    records: list[Record]
    resolver: dns.resolver.Resolver


@pytest.fixture(scope="module")
def published(knot: KnotServer, dkim_public: dict[str, bytes]) -> Published:
    keys = [DkimPublicKey(BASE, "rsa1", dkim_public["rsa-a"]),
            DkimPublicKey(BASE, "ed1", dkim_public["ed"], DkimAlgorithm.ED25519_SHA256)]
    inputs = scenario("chk", 110, [o + 100 for o in POOL], dkim=keys, mta_sts=True)
    records = build_records(inputs)
    provider = Rfc2136Provider(knot.address, [FORWARD_ZONE, REVERSE_ZONE], key_name=KEY_NAME, secret=KEY_SECRET,
                               port=knot.port)
    assert not sync(provider, "mail/chk", records).plan.conflicts
    return Published(inputs, records, resolver_for(knot.nameserver))


@pytest.fixture
def knot_default_resolver(published: Published) -> Iterator[None]:
    """Point dnspython's default resolver (what pyspf uses) at the Knot server."""
    saved = dns.resolver.default_resolver
    dns.resolver.default_resolver = published.resolver
    try:
        yield
    finally:
        dns.resolver.default_resolver = saved


@pytest.mark.parametrize("domain", DOMAINS)
def test_checkdmarc_accepts_spf(published: Published, domain: str) -> None:
    result = checkdmarc.spf.check_spf(domain, resolver=published.resolver)
    assert result["valid"], result
    assert result["record"] == "v=spf1 ip4:127.0.10.111 ip4:127.0.10.112/31 -all"
    assert result["dns_lookups"] == 0 and result["warnings"] == []


@pytest.mark.parametrize("domain", DOMAINS[:2])
def test_checkdmarc_accepts_dmarc(published: Published, domain: str) -> None:
    result = checkdmarc.dmarc.check_dmarc(domain, resolver=published.resolver)
    assert result["valid"], result
    tags = result["tags"]
    assert tags["p"]["value"] == "quarantine" and "pct" not in tags
    # only the test domain's own gap remains (no MX for the report address's domain)
    assert [w for w in result["warnings"] if "has no MX records" not in w] == []
    assert tags["adkim"]["value"] == "r" and tags["aspf"]["value"] == "r"
    assert [u["address"] for u in tags["rua"]["value"]] == [f"dmarc@{BASE}"]


def test_checkdmarc_accepts_mta_sts_and_tls_rpt(published: Published) -> None:
    rp = f"bounces.{BASE}"
    sts = checkdmarc.mta_sts.query_mta_sts_record(rp, resolver=published.resolver)
    assert sts["record"].startswith("v=STSv1; id=")
    policy = checkdmarc.mta_sts.parse_mta_sts_policy(mta_sts_policy_text(published.inputs))
    assert policy["policy"]["mode"] == "enforce" and policy["policy"]["mx"] == [f"mta.{BASE}"]
    rpt = checkdmarc.smtp_tls_reporting.check_smtp_tls_reporting(rp, resolver=published.resolver)
    assert rpt["valid"] and rpt["warnings"] == [], rpt


def test_pyspf_passes_pool_addresses_and_fails_others(published: Published, knot_default_resolver: None) -> None:
    for domain in DOMAINS:
        for o in POOL:
            result, _, explanation = spf.check(i=ip(o + 100), s=f"bounce@{domain}", h=f"out{o + 100}.{BASE}")
            assert result == "pass", (domain, o, explanation)
        result, _, _ = spf.check(i=ip(199), s=f"bounce@{domain}", h="mx.elsewhere.test")
        assert result == "fail"
    # an unrelated domain without SPF is "none": the resolver really is the Knot server
    assert spf.check(i=ip(111), s="x@www.example.test", h="x")[0] == "none"


MESSAGE = (
    f"From: Alice <alice@{BASE}>\r\nTo: bob@example.net\r\nSubject: DKIM over Knot\r\n"
    "Date: Thu, 26 Nov 2026 04:00:00 +0000\r\nMessage-ID: <1@chk.example.test>\r\n\r\nHello.\r\n"
).encode()


def _dns_txt(published: Published) -> Callable[..., bytes | None]:
    """dkimpy's dnsfunc, answering from the Knot server."""
    def lookup(name: bytes | str, timeout: int = 5) -> bytes | None:
        qname = name.decode() if isinstance(name, bytes) else name
        try:
            answer = published.resolver.resolve(qname, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(next(iter(answer)).strings)
    return lookup


def test_dkimpy_verifies_rsa_and_ed25519_signatures(published: Published, dkim_keys: dict[str, bytes]) -> None:
    dnsfunc = _dns_txt(published)
    rsa_sig = dkim.sign(MESSAGE, b"rsa1", BASE.encode(), dkim_keys["rsa-a"], include_headers=[b"from", b"subject"])
    assert dkim.verify(rsa_sig + MESSAGE, dnsfunc=dnsfunc)
    ed = serialization.load_pem_private_key(dkim_keys["ed"], password=None)
    seed = ed.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    ed_sig = dkim.sign(MESSAGE, b"ed1", BASE.encode(), base64.b64encode(seed), signature_algorithm=b"ed25519-sha256",
                       include_headers=[b"from", b"subject"])
    assert dkim.verify(ed_sig + MESSAGE, dnsfunc=dnsfunc)
    # the check is real: a changed body fails, a key published under another selector fails
    assert not dkim.verify(rsa_sig + MESSAGE.replace(b"Hello.", b"Hullo."), dnsfunc=dnsfunc)
    other = dkim.sign(MESSAGE, b"rsa1", BASE.encode(), dkim_keys["rsa-b"], include_headers=[b"from", b"subject"])
    assert not dkim.verify(other + MESSAGE, dnsfunc=dnsfunc)


def test_verify_states(published: Published, knot: KnotServer) -> None:
    assert {v.state for v in verify(published.records, [knot.nameserver])} == {VerifyState.VERIFIED}
    # a second resolver that does not answer: published at the source, not yet everywhere
    silent = f"127.0.10.54:{free_port('127.0.10.54')}"
    [lag] = verify(published.records[:1], [knot.nameserver, silent], timeout=0.5)
    assert lag.state == VerifyState.PUBLISHED and silent in lag.message
    # a record we have not published
    missing = Record(f"nothing.{BASE}", "A", 60, ("127.0.10.1",))
    [err] = verify([missing], [knot.nameserver])
    assert err.state == VerifyState.ERROR and "no A record" in err.message


def test_fcrdns(published: Published, knot: KnotServer) -> None:
    ok = fcrdns(ip(111), knot.nameserver, expected_name=f"out111.{BASE}")
    assert ok.ok and ok.names == (f"out111.{BASE}",), ok.message
    # a PTR whose name points elsewhere: not forward-confirmed
    knot.foreign_update(REVERSE_ZONE, add=[("172.10.0.127.in-addr.arpa", 60, "PTR", f"liar.{BASE}.")])
    knot.foreign_update(FORWARD_ZONE, add=[(f"liar.{BASE}", 60, "A", ip(173))])
    bad = fcrdns(ip(172), knot.nameserver)
    assert not bad.ok and bad.names == (f"liar.{BASE}",)
    assert "does not resolve back to 127.0.10.172" in bad.message
    # a correct PTR but not the EHLO name we expect
    assert not fcrdns(ip(111), knot.nameserver, expected_name=f"out112.{BASE}").ok
    nothing = fcrdns(ip(174), knot.nameserver)
    assert not nothing.ok and nothing.message == "no PTR record for 127.0.10.174"
