"""RFC 2136 provider against a real Knot DNS server: publish, own, update, delete, survive outages."""

from __future__ import annotations

import pytest

from smtpinfra_operator.dns import (
    DkimPublicKey,
    DnsConcurrentChange,
    DnsRejected,
    DnsUnavailable,
    Record,
    Rfc2136Provider,
    VerifyState,
    build_records,
    owner_record,
    plan_changes,
    remove_owned,
    sync,
    verify,
)
from smtpinfra_operator.dns.records import reverse_name

from .knot import FOREIGN_ZONE_RECORDS, FORWARD_ZONE, KEY_NAME, KEY_SECRET, REVERSE_ZONE, KnotServer
from .scenario import ip, scenario

pytestmark = pytest.mark.dns


def ours(records: list[Record], sub: str, octets: range) -> list[Record]:
    """What the server holds for scenario `sub` (its names, its PTRs and their ownership TXTs)."""
    ptrs = {reverse_name(ip(o)) for o in octets}
    return sorted(r for r in records
                  if r.name.endswith(f".{sub}.{FORWARD_ZONE}") or r.name == f"{sub}.{FORWARD_ZONE}"
                  or r.name.split(".", 1)[-1] in ptrs or r.name in ptrs)


def foreign(records: list[Record]) -> list[Record]:
    names = {f"www.{FORWARD_ZONE}", f"_dmarc.conflict.{FORWARD_ZONE}", f"200.x.{FORWARD_ZONE}",
             f"200.{REVERSE_ZONE}"}
    return sorted(r for r in records if r.name in names)


def test_publish_then_read_back(provider: Rfc2136Provider, dkim_public: dict[str, bytes], knot: KnotServer) -> None:
    keys = (DkimPublicKey("pub.example.test", "s1", dkim_public["rsa-a"]),)
    desired = build_records(scenario("pub", 10, [11, 12, 13], dkim=keys, mta_sts=True))
    result = sync(provider, "mail/pub", desired)
    assert result.applied and not result.plan.conflicts and not result.outside
    expected = sorted(desired + [owner_record(r, "mail/pub") for r in desired])
    assert ours(provider.read(), "pub", range(11, 14)) == expected
    # level-based: a second pass finds nothing to do
    again = sync(provider, "mail/pub", desired)
    assert not again.applied and not again.plan.has_changes and len(again.plan.unchanged) == len(expected)
    assert [v.state for v in verify(desired, [knot.nameserver])] == [VerifyState.VERIFIED] * len(desired)


def test_foreign_record_is_left_untouched_and_reported(provider: Rfc2136Provider, knot: KnotServer) -> None:
    before = foreign(provider.read())
    desired = build_records(scenario("conflict", 20, [21]))
    result = sync(provider, "mail/conflict", desired)
    assert [c.desired.key for c in result.plan.conflicts] == [("_dmarc.conflict.example.test", "TXT")]
    assert "_dmarc.conflict.example.test exists and is not managed by smtp-infra" in result.plan.conflicts[0].message
    assert "p=reject" in result.plan.conflicts[0].message
    after = provider.read()
    assert foreign(after) == before
    # everything else was published, and verification shows the conflict too
    states = {v.record.key: v.state for v in verify(desired, [knot.nameserver])}
    assert states.pop(("_dmarc.conflict.example.test", "TXT")) == VerifyState.CONFLICT
    assert set(states.values()) == {VerifyState.VERIFIED}
    # a second SmtpServer claiming the same names is refused, naming the owner
    rival = sync(provider, "mail/rival", [r for r in desired if r.rtype == "A"])
    assert not rival.applied and rival.plan.conflicts
    assert all(c.message.endswith("is owned by mail/conflict") for c in rival.plan.conflicts)
    assert provider.read() == after


def test_dkim_rotation_publishes_both_selectors(provider: Rfc2136Provider, dkim_public: dict[str, bytes]) -> None:
    old = DkimPublicKey("rot.example.test", "s2025", dkim_public["rsa-a"])
    new = DkimPublicKey("rot.example.test", "s2026", dkim_public["rsa-b"])
    sync(provider, "mail/rot", build_records(scenario("rot", 30, [31], dkim=[old])))
    rotating = sync(provider, "mail/rot", build_records(scenario("rot", 30, [31], dkim=[old, new])))
    assert [r.name for r in rotating.plan.to_add] == ["_smtp-infra-owner-txt.s2026._domainkey.rot.example.test",
                                                      "s2026._domainkey.rot.example.test"]
    assert not rotating.plan.to_delete
    keys = {r.name: r for r in provider.read() if "._domainkey.rot." in r.name and not r.name.startswith("_")}
    assert set(keys) == {"s2025._domainkey.rot.example.test", "s2026._domainkey.rot.example.test"}
    # the old selector is retired once the operator drops it from the spec
    done = sync(provider, "mail/rot", build_records(scenario("rot", 30, [31], dkim=[new])))
    assert [r.name for r in done.plan.to_delete] == ["_smtp-infra-owner-txt.s2025._domainkey.rot.example.test",
                                                     "s2025._domainkey.rot.example.test"]
    assert not any(r.name.startswith("s2025.") for r in provider.read())


def test_scale_down_removes_exactly_the_retired_address(provider: Rfc2136Provider) -> None:
    sync(provider, "mail/scale", build_records(scenario("scale", 40, [41, 42, 43])))
    before = ours(provider.read(), "scale", range(41, 44))
    plan = sync(provider, "mail/scale", build_records(scenario("scale", 40, [41, 42]))).plan
    spf_names = {"scale.example.test", "news.scale.example.test", "bounces.scale.example.test"}
    assert {r.key for r in plan.to_add} == {(n, "TXT") for n in spf_names}
    assert all(r.texts() == ["v=spf1 ip4:127.0.10.41 ip4:127.0.10.42 -all"] for r in plan.to_add)
    assert {r.key for r in plan.to_delete} == {(n, "TXT") for n in spf_names} | {
        ("out43.scale.example.test", "A"), ("43.10.0.127.in-addr.arpa", "PTR"),
        ("_smtp-infra-owner-a.out43.scale.example.test", "TXT"),
        ("_smtp-infra-owner-ptr.43.10.0.127.in-addr.arpa", "TXT"),
    }
    after = ours(provider.read(), "scale", range(41, 44))
    gone = {r.key for r in before} - {r.key for r in after}
    assert gone == {("out43.scale.example.test", "A"), ("43.10.0.127.in-addr.arpa", "PTR"),
                    ("_smtp-infra-owner-a.out43.scale.example.test", "TXT"),
                    ("_smtp-infra-owner-ptr.43.10.0.127.in-addr.arpa", "TXT")}


def test_deleting_everything_we_own_leaves_foreign_records(provider: Rfc2136Provider) -> None:
    before_foreign = foreign(provider.read())
    desired = build_records(scenario("del", 50, [51]))
    sync(provider, "mail/del", desired)
    assert len(ours(provider.read(), "del", range(51, 52))) == 2 * len(desired)
    result = remove_owned(provider, "mail/del")
    assert len(result.plan.to_delete) == 2 * len(desired)
    after = provider.read()
    assert ours(after, "del", range(51, 52)) == []
    assert foreign(after) == before_foreign and len(before_foreign) == len(FOREIGN_ZONE_RECORDS) + 1
    # other servers' records are still there
    assert any(r.name == "mta.pub.example.test" for r in after)


def test_owned_record_edited_by_hand_is_repaired(provider: Rfc2136Provider, knot: KnotServer) -> None:
    desired = build_records(scenario("drift", 90, [91]))
    sync(provider, "mail/drift", desired)
    knot.foreign_update(FORWARD_ZONE, delete=[("out91.drift.example.test", "A")],
                        add=[("out91.drift.example.test", 60, "A", "127.0.10.199")])
    plan = sync(provider, "mail/drift", desired).plan
    assert [r.key for r in plan.to_add] == [("out91.drift.example.test", "A")]
    assert [v.state for v in verify(desired, [knot.nameserver])] == [VerifyState.VERIFIED] * len(desired)


def test_concurrent_change_fails_the_whole_update(provider: Rfc2136Provider, knot: KnotServer) -> None:
    desired = build_records(scenario("race", 80, [81]))
    plan = sync(provider, "mail/race", desired, dry_run=True).plan
    assert plan.to_add and not plan.conflicts
    # between our read and our write somebody else creates one of the names
    knot.foreign_update(FORWARD_ZONE, add=[("mta.race.example.test", 60, "A", "127.0.10.198")])
    with pytest.raises(DnsConcurrentChange, match="changed since it was read"):
        provider.apply(plan)
    # atomic: nothing of ours arrived in the forward zone
    fwd = [r for r in ours(provider.read(), "race", range(81, 82)) if r.name.endswith(FORWARD_ZONE)]
    assert fwd == [Record("mta.race.example.test", "A", 60, ("127.0.10.198",))]
    # the next reconcile sees it as a conflict and publishes the rest
    result = sync(provider, "mail/race", desired)
    assert [c.desired.key for c in result.plan.conflicts] == [("mta.race.example.test", "A")]


def test_server_down_is_a_clear_error_then_recovers(provider: Rfc2136Provider, knot: KnotServer) -> None:
    desired = build_records(scenario("down", 60, [61]))
    knot.stop()
    try:
        with pytest.raises(DnsUnavailable) as err:
            sync(provider, "mail/down", desired)
        assert str(err.value) == f"AXFR example.test at {knot.address}:{knot.port}: connection refused " \
                                 "(is the DNS server running?)"
        assert err.value.__cause__ is None and err.value.__suppress_context__
        states = verify(desired[:1], [knot.nameserver], timeout=0.5)
        assert states[0].state == VerifyState.ERROR and knot.nameserver in states[0].message
    finally:
        knot.start()
    assert sync(provider, "mail/down", desired).applied
    assert {v.state for v in verify(desired, [knot.nameserver])} == {VerifyState.VERIFIED}


def test_wrong_tsig_key_is_rejected(knot: KnotServer) -> None:
    bad = Rfc2136Provider(knot.address, [FORWARD_ZONE], key_name=KEY_NAME, secret="d3Jvbmcgc2VjcmV0",
                          port=knot.port, timeout=2.0)
    with pytest.raises(DnsRejected, match="rejected TSIG key smtp-infra-test"):
        bad.read()
    desired = build_records(scenario("tsig", 70, []))
    with pytest.raises(DnsRejected, match=r"UPDATE example\.test"):
        bad.apply(plan_changes("mail/tsig", desired, []))
    assert not any(r.name.endswith("tsig.example.test") for r in Rfc2136Provider(
        knot.address, [FORWARD_ZONE], key_name=KEY_NAME, secret=KEY_SECRET, port=knot.port).read())


def test_delete_requires_our_ownership_to_still_hold(provider: Rfc2136Provider, knot: KnotServer) -> None:
    desired = build_records(scenario("hand", 100, [101]))
    sync(provider, "mail/hand", desired)
    plan = sync(provider, "mail/hand", [], dry_run=True).plan
    # meanwhile an admin hands the host record over to another server
    owner_name = "_smtp-infra-owner-a.mta.hand.example.test"
    knot.foreign_update(FORWARD_ZONE, delete=[(owner_name, "TXT")], add=[(
        owner_name, 60, "TXT", '"heritage=smtp-infra,smtp-infra/owner=mail/other,smtp-infra/type=A"')])
    with pytest.raises(DnsConcurrentChange):
        provider.apply(plan)
    assert any(r.key == ("mta.hand.example.test", "A") for r in provider.read())
    # a fresh plan deletes everything of ours and leaves the handed-over record alone
    result = remove_owned(provider, "mail/hand")
    left = [r for r in provider.read() if r.name.endswith("hand.example.test")]
    assert sorted(r.name for r in left) == [owner_name, "mta.hand.example.test"]
    assert result.plan.to_delete and not result.plan.conflicts
