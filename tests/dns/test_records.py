"""Pure record builders: what is published for an SmtpServer, byte for byte."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import dns.rdata
import pytest

from smtpinfra_api.v1alpha1 import DkimAlgorithm, DmarcPolicy, DmarcSpec, SmtpServerSpec
from smtpinfra_operator.builders import workload
from smtpinfra_operator.builders.mtaconfig import MTA_STS_PORT, ServerInputs, SourceAddress, replica_config
from smtpinfra_operator.dns import (
    DkimPublicKey,
    Record,
    RecordError,
    SendingIp,
    build_records,
    desired_diff,
    dkim_text,
    dmarc_text,
    inputs_from_spec,
    mta_sts_policy,
    mta_sts_policy_id,
    mta_sts_policy_text,
    spf_text,
    spki_kind,
    txt_value,
    unmanaged_records,
)

from .scenario import ip, scenario

pytestmark = pytest.mark.dns

SPF = "v=spf1 ip4:127.0.10.11 ip4:127.0.10.12/31 -all"


def by_key(records: list[Record]) -> dict[tuple[str, str], Record]:
    return {r.key: r for r in records}


def test_builds_every_record_set_of_a_server() -> None:
    recs = build_records(scenario("u", 10, [11, 12, 13]))
    assert recs == sorted(recs)
    got = by_key(recs)
    assert set(got) == {
        ("mta.u.example.test", "A"),
        ("out11.u.example.test", "A"), ("out12.u.example.test", "A"), ("out13.u.example.test", "A"),
        ("11.10.0.127.in-addr.arpa", "PTR"), ("12.10.0.127.in-addr.arpa", "PTR"), ("13.10.0.127.in-addr.arpa", "PTR"),
        ("u.example.test", "TXT"), ("news.u.example.test", "TXT"), ("bounces.u.example.test", "TXT"),
        ("_dmarc.u.example.test", "TXT"), ("_dmarc.news.u.example.test", "TXT"),
        ("bounces.u.example.test", "MX"),
    }
    assert got[("mta.u.example.test", "A")].values == ("127.0.10.10",)
    assert got[("12.10.0.127.in-addr.arpa", "PTR")].values == ("out12.u.example.test.",)
    assert got[("bounces.u.example.test", "MX")].values == ("10 mta.u.example.test.",)
    # SPF on every sending domain and on the return-path domain, exactly the pool addresses
    for d in ("u.example.test", "news.u.example.test", "bounces.u.example.test"):
        assert got[(d, "TXT")].texts() == [SPF]
    assert got[("_dmarc.u.example.test", "TXT")].texts() == [
        "v=DMARC1; p=quarantine; rua=mailto:dmarc@u.example.test; adkim=r; aspf=r"]
    assert all(r.ttl == 60 for r in recs)
    assert not any(r.name.startswith(("_mta-sts", "_smtp._tls", "mta-sts")) for r in recs)


def test_ipv6_addresses_and_zones_we_do_not_own() -> None:
    inputs = dataclasses.replace(
        scenario("v6", 10, [11]),
        service_addresses=("127.0.10.10", "2001:db8::10"),
        sending=(SendingIp("127.0.10.11", "out.v6.example.test"), SendingIp("2001:db8::11", "out.v6.example.test")),
        sender_domains=("v6.example.test", "tenant.example.org"),
    )
    got = by_key(build_records(inputs))
    assert got[("mta.v6.example.test", "AAAA")].values == ("2001:db8::10",)
    assert got[("out.v6.example.test", "A")].values == ("127.0.10.11",)
    assert got[("out.v6.example.test", "AAAA")].values == ("2001:db8::11",)
    assert got[("v6.example.test", "TXT")].texts() == ["v=spf1 ip4:127.0.10.11 ip6:2001:db8::11 -all"]
    # no PTR for the IPv6 address: its reverse zone is not ours; nothing in example.org either
    assert [k for k in got if k[1] == "PTR"] == [("11.10.0.127.in-addr.arpa", "PTR")]
    assert not any(n.endswith("example.org") for n, _ in got)
    outside = by_key(unmanaged_records(inputs))
    assert set(outside) == {
        ("tenant.example.org", "TXT"), ("_dmarc.tenant.example.org", "TXT"),
        ("1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "PTR"),
    }


def test_spf_is_split_into_255_byte_strings_inside_one_txt() -> None:
    addrs = [f"10.{i}.{i}.1" for i in range(1, 25)]  # not adjacent: 24 separate terms
    text = spf_text(addrs)
    assert len(text) > 255
    value = txt_value(text)
    rd = dns.rdata.from_text("IN", "TXT", value)
    strings = rd.strings  # type: ignore[attr-defined]
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    assert b"".join(strings).decode() == text
    assert Record("x.example.test", "TXT", 60, (value,)).texts() == [text]


def test_spf_refuses_more_than_512_bytes() -> None:
    addrs = [f"10.{i}.{i}.1" for i in range(1, 40)]
    with pytest.raises(RecordError, match=r"SPF record for d\.test is \d+ bytes; more than 512"):
        spf_text(addrs, domain="d.test")


def test_spf_refuses_more_than_10_lookups() -> None:
    ten = [f"include:_spf{i}.example.net" for i in range(9)] + ["mx"]
    assert spf_text(["192.0.2.1"], ten).endswith("mx -all")
    with pytest.raises(RecordError, match="needs 11 DNS lookups; RFC 7208 allows 10"):
        spf_text(["192.0.2.1"], [*ten, "a:relay.example.net"])
    # the builder passes the limit through: a server with too many includes is refused
    with pytest.raises(RecordError):
        build_records(dataclasses.replace(scenario("l", 10, [11]), spf_extra=(*ten, "exists:%{i}.x.test")))


def test_contiguous_addresses_collapse_to_cidrs_and_stay_exact() -> None:
    text = spf_text([f"192.0.2.{i}" for i in range(8, 16)] + ["192.0.2.17"])
    assert text == "v=spf1 ip4:192.0.2.8/29 ip4:192.0.2.17 -all"
    assert spf_text([]) == "v=spf1 -all"


def test_dkim_records_for_rsa_and_ed25519(dkim_public: dict[str, bytes]) -> None:
    der = dkim_public["rsa-a"]
    rsa_key = DkimPublicKey("d.example.test", "s1", der)
    assert dkim_text(rsa_key) == f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    assert spki_kind(der) == "rsa"

    ed = DkimPublicKey("d.example.test", "ed", dkim_public["ed"], DkimAlgorithm.ED25519_SHA256)
    text = dkim_text(ed)
    raw = base64.b64decode(text.split("p=")[1])
    assert text.startswith("v=DKIM1; k=ed25519; p=")
    assert len(raw) == 32 and dkim_public["ed"].endswith(raw)  # RFC 8463: the raw key, not its SPKI

    recs = by_key(build_records(dataclasses.replace(scenario("k", 10, [11]), dkim_keys=(rsa_key, ed))))
    rsa_rec = recs[("s1._domainkey.d.example.test", "TXT")]
    assert rsa_rec.texts() == [dkim_text(rsa_key)]
    assert rsa_rec.values[0].count('" "') == 1  # 2048-bit key: two character-strings
    assert recs[("ed._domainkey.d.example.test", "TXT")].texts() == [text]


def test_dkim_refuses_a_key_of_the_wrong_algorithm_or_garbage(dkim_public: dict[str, bytes]) -> None:
    with pytest.raises(RecordError, match="is ed25519 but algorithm is rsa-sha256"):
        dkim_text(DkimPublicKey("d.test", "s", dkim_public["ed"], DkimAlgorithm.RSA_SHA256))
    with pytest.raises(RecordError, match="is rsa but algorithm is ed25519-sha256"):
        dkim_text(DkimPublicKey("d.test", "s", dkim_public["rsa-a"], DkimAlgorithm.ED25519_SHA256))
    for garbage in (b"not a key", b"", dkim_public["ed"][:-1], b"\x30" + dkim_public["rsa-a"][30:]):
        with pytest.raises(RecordError, match="only RSA and Ed25519 keys are supported"):
            dkim_text(DkimPublicKey("d.test", "s", garbage))


def test_dmarc_text() -> None:
    assert dmarc_text(DmarcSpec()) == "v=DMARC1; p=none; adkim=r; aspf=r"  # pct=100 is the default
    assert dmarc_text(DmarcSpec(percent=0)) == "v=DMARC1; p=none; pct=0; t=y; adkim=r; aspf=r"
    spec = DmarcSpec(policy=DmarcPolicy.REJECT, aggregate_report_to=["b@r.test", "a!x@r.test"], percent=25)
    assert dmarc_text(spec) == "v=DMARC1; p=reject; rua=mailto:a%21x@r.test,mailto:b@r.test; pct=25; adkim=r; aspf=r"


def test_mta_sts_and_tls_rpt_when_enabled() -> None:
    inputs = scenario("s", 10, [11], mta_sts=True)
    got = by_key(build_records(inputs))
    policy = mta_sts_policy_text(inputs)
    assert policy == "version: STSv1\r\nmode: enforce\r\nmx: mta.s.example.test\r\nmax_age: 604800\r\n"
    assert got[("_mta-sts.bounces.s.example.test", "TXT")].texts() == [f"v=STSv1; id={mta_sts_policy_id(policy)}"]
    assert got[("_smtp._tls.bounces.s.example.test", "TXT")].texts() == [
        "v=TLSRPTv1; rua=mailto:postmaster@bounces.s.example.test"]
    assert got[("mta-sts.bounces.s.example.test", "A")].values == ("127.0.10.10",)
    # a different MX host is a different policy, hence a new id (receivers refetch it)
    other = dataclasses.replace(inputs, mx_host="mx2.s.example.test")
    assert mta_sts_policy_id(mta_sts_policy_text(other)) != mta_sts_policy_id(policy)
    assert by_key(build_records(other))[("bounces.s.example.test", "MX")].values == ("10 mx2.s.example.test.",)
    with pytest.raises(RecordError):
        mta_sts_policy(["mx.test"], mode="strict")


def test_desired_diff_touches_only_what_changed() -> None:
    old = build_records(scenario("d", 10, [11, 12, 13]))
    new = build_records(dataclasses.replace(scenario("d", 10, [11, 12, 13]),
                                            dmarc=DmarcSpec(policy=DmarcPolicy.REJECT)))
    to_add, to_delete, unchanged = desired_diff(old, new)
    assert {r.key for r in to_add} == {r.key for r in to_delete} == {
        ("_dmarc.d.example.test", "TXT"), ("_dmarc.news.d.example.test", "TXT")}
    assert all("p=reject" in r.texts()[0] for r in to_add)
    assert len(unchanged) == len(new) - 2
    assert desired_diff(old, old) == ([], [], old)
    # a TTL change is a change
    to_add, to_delete, _ = desired_diff(old, [dataclasses.replace(r, ttl=300) for r in old])
    assert len(to_add) == len(to_delete) == len(old)


def test_inputs_from_a_real_spec() -> None:
    spec = SmtpServerSpec.model_validate({
        "hostname": "mta.example.test", "ipPools": ["p"], "returnPathDomain": "bounces.example.test",
        "tls": {"secretName": "tls"},
        "dns": {"provider": "rfc2136", "mtaSts": True, "ttl": 120,
                "dmarc": {"policy": "quarantine", "aggregateReportTo": ["d@example.test"]},
                "rfc2136": {"server": "127.0.10.53", "zone": "example.test", "reverseZones": ["10.0.127.in-addr.arpa"],
                            "tsigSecretRef": {"name": "tsig", "key": "secret"}, "tsigKeyName": "smtp-infra.key"}},
    })
    inputs = inputs_from_spec("mail/mta", spec, sending=[(ip(11), "out.example.test")],
                              sender_domains=["example.test"])
    assert inputs.forward_zones == ("example.test",) and inputs.reverse_zones == ("10.0.127.in-addr.arpa",)
    assert inputs.mta_sts_mode == "enforce" and inputs.ttl == 120
    got = by_key(build_records(inputs))
    assert got[("_dmarc.example.test", "TXT")].texts()[0].startswith("v=DMARC1; p=quarantine; rua=mailto:d@")
    assert ("11.10.0.127.in-addr.arpa", "PTR") in got and ("_mta-sts.bounces.example.test", "TXT") in got


def _server_spec(*, mta_sts: bool = True, tls: bool = True) -> SmtpServerSpec:
    return SmtpServerSpec.model_validate({
        "hostname": "mta.sts.example.test", "ipPools": ["p"], "returnPathDomain": "bounces.sts.example.test",
        **({"tls": {"issuerRef": {"name": "ca"}}} if tls else {"listeners": {"submission": {"enabled": False}}}),
        "dns": {"mtaSts": mta_sts},
    })


def _replica_config(spec: SmtpServerSpec) -> Any:
    server = ServerInputs("sts", "mail", spec, [], {0: [SourceAddress("p", ip(11), "out11.sts.example.test")]})
    return replica_config(server, 0)


def test_the_mta_config_carries_the_policy_whose_id_is_published() -> None:
    """The operator renders into the MTA config exactly the policy text the _mta-sts TXT id is computed from."""
    spec = _server_spec()
    cfg = _replica_config(spec)
    assert cfg.mta_sts is not None and cfg.http.mta_sts_port == MTA_STS_PORT
    policy = cfg.mta_sts.policy
    assert policy == "version: STSv1\r\nmode: enforce\r\nmx: mta.sts.example.test\r\nmax_age: 604800\r\n"
    inputs = inputs_from_spec("mail/sts", spec, sending=[(ip(11), "out11.sts.example.test")],
                              service_addresses=[ip(10), ip(9)])
    got = by_key(build_records(inputs))
    assert got[("_mta-sts.bounces.sts.example.test", "TXT")].texts() == [f"v=STSv1; id={mta_sts_policy_id(policy)}"]
    # the policy names the MX target of the return-path domain
    assert got[("bounces.sts.example.test", "MX")].values == ("10 mta.sts.example.test.",)
    # mta-sts.<domain> points where the MTA's host name points: the addresses of its Services
    assert set(got[("mta-sts.bounces.sts.example.test", "A")].values) == {ip(9), ip(10)}
    assert got[("mta-sts.bounces.sts.example.test", "A")].values == got[("mta.sts.example.test", "A")].values
    # ... and those Services carry 443 to the MTA's HTTPS policy listener, whose certificate names mta-sts.<domain>
    owner = workload.Owner("sts", "mail", "uid-1")
    for service in workload.services(owner, spec)[1:]:
        assert {"name": "mta-sts", "port": 443, "targetPort": "mta-sts"} in service["spec"]["ports"]
    [container] = workload.statefulset(owner, spec, 1, "img", "sts-tls")["spec"]["template"]["spec"]["containers"]
    assert {"name": "mta-sts", "containerPort": MTA_STS_PORT, "protocol": "TCP"} in container["ports"]
    assert workload.certificate(owner, spec, "sts-tls")["spec"]["dnsNames"] == [
        "mta.sts.example.test", "mta-sts.bounces.sts.example.test"]


def test_without_mta_sts_nothing_is_served_and_without_tls_no_https() -> None:
    owner = workload.Owner("sts", "mail", "uid-1")
    off = _server_spec(mta_sts=False)
    cfg = _replica_config(off)
    assert cfg.mta_sts is None and cfg.http.mta_sts_port is None
    assert all(p["name"] != "mta-sts" for s in workload.services(owner, off) for p in s["spec"]["ports"])
    assert workload.certificate(owner, off, "sts-tls")["spec"]["dnsNames"] == ["mta.sts.example.test"]
    plain = _replica_config(_server_spec(tls=False))
    assert plain.mta_sts is not None and "mode: testing" in plain.mta_sts.policy and plain.http.mta_sts_port is None


def test_txt_split_never_breaks_escaping_or_multibyte_text() -> None:
    text = 'é"\\;' * 150  # 750 bytes, quotes and backslashes and 2-byte characters
    value = txt_value(text)
    assert Record("t.example.test", "TXT", 60, (value,)).texts() == [text]
    rd = dns.rdata.from_text("IN", "TXT", value)
    assert [len(s) for s in rd.strings] == [255, 255, 240]  # type: ignore[attr-defined]
