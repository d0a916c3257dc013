"""Ownership registry and planning, without a server: what may be touched and what conflicts."""

from __future__ import annotations

import pytest

from smtpinfra_api.v1alpha1 import DnsProvider, Rfc2136Spec
from smtpinfra_operator.controllers.dnsreport import DnsReport, recorded_target, stale_zones
from smtpinfra_operator.dns import Record, build_records, owner_record, owner_record_name, owner_text, plan_changes
from smtpinfra_operator.dns.ownership import parse_owner

from .scenario import scenario

pytestmark = pytest.mark.dns

OWNER = "mail/o"


def published(records: list[Record], owner: str = OWNER) -> list[Record]:
    """The zone contents after `owner` published `records`."""
    return records + [owner_record(r, owner) for r in records]


def test_ownership_txt_format_and_parse() -> None:
    r = Record("out.o.example.test", "A", 60, ("127.0.10.1",))
    o = owner_record(r, OWNER)
    assert o.name == "_smtp-infra-owner-a.out.o.example.test" == owner_record_name(r.name, "A")
    assert o.texts() == ["heritage=smtp-infra,smtp-infra/owner=mail/o,smtp-infra/type=A"] == [owner_text(OWNER, "A")]
    assert parse_owner(o) == (("out.o.example.test", "A"), OWNER)
    # a TXT at the right name but with other content is not an ownership record
    assert parse_owner(Record(o.name, "TXT", 60, ('"hello"',))) is None


def test_first_publication_adds_records_and_companions() -> None:
    desired = build_records(scenario("o", 10, [11]))
    plan = plan_changes(OWNER, desired, [])
    assert not plan.conflicts and not plan.to_delete and not plan.unchanged
    assert sorted(plan.to_add) == sorted(published(desired))
    # once published, nothing to do
    again = plan_changes(OWNER, desired, published(desired))
    assert not again.has_changes and len(again.unchanged) == 2 * len(desired)


def test_foreign_record_set_is_a_conflict_and_left_alone() -> None:
    desired = build_records(scenario("o", 10, [11]))
    foreign = Record("_dmarc.o.example.test", "TXT", 300, ('"v=DMARC1; p=reject"',))
    plan = plan_changes(OWNER, desired, [foreign])
    assert [c.desired.key for c in plan.conflicts] == [foreign.key]
    c = plan.conflicts[0]
    assert c.existing == foreign and c.owner is None
    assert "TXT _dmarc.o.example.test exists and is not managed by smtp-infra" in c.message
    assert foreign.key not in {r.key for r in plan.to_add + plan.to_delete}
    assert len(plan.to_add) == 2 * (len(desired) - 1)


def test_record_set_of_another_owner_is_a_conflict_naming_it() -> None:
    desired = build_records(scenario("o", 10, [11]))
    plan = plan_changes("mail/other", desired, published(desired))
    assert len(plan.conflicts) == len(desired) and not plan.has_changes
    assert all(c.message.endswith("is owned by mail/o") for c in plan.conflicts)


def test_foreign_cname_at_our_name_is_a_conflict() -> None:
    desired = build_records(scenario("o", 10, [11]))
    cname = Record("mta.o.example.test", "CNAME", 60, ("elsewhere.example.net.",))
    plan = plan_changes(OWNER, desired, [cname])
    assert [(c.desired.key, c.existing) for c in plan.conflicts] == [(("mta.o.example.test", "A"), cname)]
    assert "foreign CNAME" in plan.conflicts[0].message


def test_only_owned_records_are_deleted() -> None:
    ours = build_records(scenario("o", 10, [11, 12]))
    theirs = build_records(scenario("t", 20, [21]))
    current = published(ours) + published(theirs, "mail/t") + [Record("www.example.test", "A", 60, ("127.0.10.200",))]
    plan = plan_changes(OWNER, [], current)
    assert sorted(plan.to_delete) == sorted(published(ours))
    assert not plan.to_add and not plan.conflicts


def test_owned_record_edited_by_someone_is_put_back() -> None:
    desired = build_records(scenario("o", 10, [11]))
    drifted = [Record(r.name, r.rtype, r.ttl, ("127.0.10.99",)) if r.key == ("out11.o.example.test", "A") else r
               for r in desired]
    plan = plan_changes(OWNER, desired, published(drifted))
    assert [r.key for r in plan.to_add] == [r.key for r in plan.to_delete] == [("out11.o.example.test", "A")]
    assert plan.to_add[0].values == ("127.0.10.11",) and plan.to_delete[0].values == ("127.0.10.99",)


def _rfc(server: str = "192.0.2.53", port: int = 53, zone: str = "example.test",
         reverse: tuple[str, ...] = ("2.0.192.in-addr.arpa",)) -> Rfc2136Spec:
    return Rfc2136Spec.model_validate({"server": server, "port": port, "zone": zone, "reverseZones": list(reverse),
                                       "tsigSecretRef": {"name": "tsig", "key": "secret"}, "tsigKeyName": "k"})


def test_stale_zones_after_a_spec_dns_change() -> None:
    """Where our records must go when spec.dns stops pointing at the recorded server or zones."""
    recorded = _rfc()
    both = ["example.test", "2.0.192.in-addr.arpa"]
    assert stale_zones(recorded, None) == both  # provider switched to external-dns or none
    assert stale_zones(recorded, _rfc(server="192.0.2.54")) == both
    assert stale_zones(recorded, _rfc(port=5353)) == both
    assert stale_zones(recorded, _rfc(reverse=())) == ["2.0.192.in-addr.arpa"]  # a dropped reverse zone
    assert stale_zones(recorded, _rfc(reverse=("2.0.192.in-addr.arpa", "3.0.192.in-addr.arpa"))) == []
    assert stale_zones(recorded, recorded) == []


def test_the_recorded_target_round_trips_through_status() -> None:
    report = DnsReport(DnsProvider.NONE, "True", "NotManaged", "", rfc2136=_rfc())
    field = report.status_field()
    assert field["rfc2136"]["tsigSecretRef"] == {"name": "tsig", "key": "secret"}
    assert recorded_target({"status": {"dns": field}}) == _rfc()
    assert "rfc2136" not in DnsReport(DnsProvider.NONE, "True", "NotManaged", "").status_field()
    assert recorded_target({"status": {"dns": {"provider": "none"}}}) is None
    assert recorded_target({"status": {"dns": {"rfc2136": {"server": "x"}}}}) is None  # unreadable: nothing known
