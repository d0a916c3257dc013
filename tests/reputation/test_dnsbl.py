"""The blocklist decisions without DNS: query names, classification, self-tests, hysteresis, quarantine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dns.message
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpinfra_api.v1alpha1 import IpPoolSpec
from smtpinfra_operator.reputation.dnsbl import (
    SPAMHAUS_ERRORS,
    AnswerKind,
    Classified,
    Lookup,
    Result,
    State,
    ZoneState,
    classify,
    error_codes,
    quarantine,
    query_name,
    self_test,
    step,
)
from smtpinfra_operator.reputation.dnsbl_resolver import question_wire
from smtpinfra_operator.reputation.dnsbl_status import (
    PoolView,
    address_fields,
    advance,
    degraded,
    pool_config,
    restore,
    transitions,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LISTED = Classified(Result.LISTED, "127.0.0.2")
CLEAN = Classified(Result.NOT_LISTED)
TIMEOUT = Classified(Result.UNKNOWN, detail="timeout")
ERROR = Classified(Result.ERROR, "127.255.255.254")
UNUSABLE = Classified(Result.UNUSABLE)


@pytest.mark.parametrize(("address", "zone", "key", "name"), [
    ("192.0.2.99", "zen.spamhaus.org", None, "99.2.0.192.zen.spamhaus.org."),
    ("127.0.0.2", "bl.test.", None, "2.0.0.127.bl.test."),
    ("192.0.2.99", "zen.dq.spamhaus.net", "abc123", "99.2.0.192.abc123.zen.dq.spamhaus.net."),
    ("2001:db8:1:2:3:4:567:89ab", "bl.test",
     None, "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.test."),
    ("::ffff:7f00:2", "bl.test", None, "2.0.0.0.0.0.f.7.f.f.f.f." + "0." * 20 + "bl.test."),
])
def test_query_names_reverse_octets_and_nibbles(address: str, zone: str, key: str | None, name: str) -> None:
    assert query_name(address, zone, key) == name


SPAMHAUS = error_codes("zen.spamhaus.org")


@pytest.mark.parametrize(("lookup", "errors", "result", "code"), [
    (Lookup(AnswerKind.ADDRESSES, ("127.0.0.2",)), SPAMHAUS, Result.LISTED, "127.0.0.2"),
    (Lookup(AnswerKind.ADDRESSES, ("127.0.0.4", "127.0.0.10")), SPAMHAUS, Result.LISTED, "127.0.0.4"),
    (Lookup(AnswerKind.ADDRESSES, ("127.0.0.254",)), frozenset(), Result.LISTED, "127.0.0.254"),
    (Lookup(AnswerKind.ADDRESSES, ("127.255.255.254",)), SPAMHAUS, Result.ERROR, "127.255.255.254"),
    (Lookup(AnswerKind.ADDRESSES, ("127.255.255.252",)), SPAMHAUS, Result.ERROR, "127.255.255.252"),
    (Lookup(AnswerKind.ADDRESSES, ("127.255.255.255",)), SPAMHAUS, Result.ERROR, "127.255.255.255"),
    # an error code beside a listing code is still an error, never a confirmation
    (Lookup(AnswerKind.ADDRESSES, ("127.0.0.2", "127.255.255.254")), SPAMHAUS, Result.ERROR, "127.255.255.254"),
    # unknown zones: anything outside 127.0.0.2-254 is an error, not a listing
    (Lookup(AnswerKind.ADDRESSES, ("127.255.255.254",)), frozenset(), Result.ERROR, "127.255.255.254"),
    (Lookup(AnswerKind.ADDRESSES, ("10.0.0.2",)), frozenset(), Result.ERROR, "10.0.0.2"),
    (Lookup(AnswerKind.ADDRESSES, ("127.0.0.1",)), frozenset(), Result.ERROR, "127.0.0.1"),
    (Lookup(AnswerKind.ADDRESSES, ("127.0.1.2",)), frozenset(), Result.ERROR, "127.0.1.2"),
    # a zone's documented error code inside the listing range
    (Lookup(AnswerKind.ADDRESSES, ("127.0.0.9",)), error_codes("x.test", ["127.0.0.9"]), Result.ERROR, "127.0.0.9"),
    (Lookup(AnswerKind.NXDOMAIN), SPAMHAUS, Result.NOT_LISTED, None),
    (Lookup(AnswerKind.NODATA), SPAMHAUS, Result.NOT_LISTED, None),
    (Lookup(AnswerKind.FAILURE, detail="timeout"), SPAMHAUS, Result.UNKNOWN, None),
    (Lookup(AnswerKind.FAILURE, detail="SERVFAIL"), SPAMHAUS, Result.UNKNOWN, None),
    (Lookup(AnswerKind.FAILURE, detail="REFUSED"), SPAMHAUS, Result.UNKNOWN, None),
])
def test_classification(lookup: Lookup, errors: frozenset[str], result: Result, code: str | None) -> None:
    got = classify(lookup, errors)
    assert (got.result, got.code) == (result, code)


def test_known_error_codes_follow_the_zone_operator() -> None:
    assert error_codes("zen.dq.spamhaus.net") == SPAMHAUS_ERRORS
    assert error_codes("ZEN.Spamhaus.org.") == SPAMHAUS_ERRORS
    assert error_codes("notspamhaus.org") == frozenset()


@settings(deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_any_answer_is_listed_only_inside_the_listing_range(value: int) -> None:
    import ipaddress

    code = str(ipaddress.IPv4Address(value))
    got = classify(Lookup(AnswerKind.ADDRESSES, (code,)), SPAMHAUS)
    inside = code.startswith("127.0.0.") and 2 <= value & 0xFF <= 254
    assert (got.result is Result.LISTED) == inside
    assert got.result in (Result.LISTED, Result.ERROR)


@pytest.mark.parametrize(("points", "usable", "reason"), [
    ((LISTED, CLEAN), True, "SelfTestPassed"),
    ((LISTED, CLEAN, LISTED, CLEAN), True, "SelfTestPassed"),
    ((LISTED, LISTED), False, "SelfTestFailed"),  # lists everything
    ((CLEAN, CLEAN), False, "SelfTestFailed"),  # lists nothing, e.g. a dead list answering NXDOMAIN
    ((ERROR, ERROR), False, "SelfTestError"),
    ((LISTED, CLEAN, CLEAN, CLEAN), False, "SelfTestFailed"),  # IPv6 test point missing
    ((TIMEOUT, CLEAN), None, "SelfTestNoAnswer"),
])
def test_rfc5782_self_test(points: tuple[Classified, ...], usable: bool | None, reason: str) -> None:
    verdict = self_test(*points)
    assert (verdict.usable, verdict.reason) == (usable, reason)


def run(answers: list[Classified], confirmations: int = 2, release: timedelta = timedelta(hours=24),
        every: timedelta = timedelta(hours=1)) -> list[ZoneState]:
    state, out = ZoneState(), []
    for i, seen in enumerate(answers):
        state = step(state, seen, T0 + i * every, confirmations, release)
        out.append(state)
    return out


@pytest.mark.parametrize(("answers", "states"), [
    ([CLEAN], [State.CLEAN]),
    ([LISTED, LISTED], [State.PENDING, State.LISTED]),
    ([LISTED, CLEAN, LISTED], [State.PENDING, State.CLEAN, State.PENDING]),  # flapping never lists
    ([LISTED, TIMEOUT, LISTED], [State.PENDING, State.PENDING, State.LISTED]),
    ([TIMEOUT, ERROR, UNUSABLE], [State.UNKNOWN] * 3),  # never clean from what is not an answer
    ([CLEAN, TIMEOUT, ERROR, UNUSABLE], [State.CLEAN] * 4),
    ([LISTED, LISTED, TIMEOUT, ERROR, UNUSABLE], [State.PENDING] + [State.LISTED] * 4),
    ([LISTED, LISTED, CLEAN, LISTED], [State.PENDING, State.LISTED, State.RELEASING, State.LISTED]),
])
def test_hysteresis(answers: list[Classified], states: list[State]) -> None:
    assert [s.state for s in run(answers)] == states


def test_release_only_after_the_listing_was_gone_for_release_after() -> None:
    release = timedelta(hours=24)
    s = step(ZoneState(), LISTED, T0, 1, release)
    assert s.state is State.LISTED and s.since == T0 and s.code == "127.0.0.2"
    s = step(s, CLEAN, T0 + timedelta(hours=1), 1, release)
    assert s.state is State.RELEASING and s.since == T0 + timedelta(hours=1) and s.code == "127.0.0.2"
    s = step(s, TIMEOUT, T0 + timedelta(hours=30), 1, release)  # a timeout is not "still gone"
    assert s.state is State.RELEASING
    s = step(s, CLEAN, T0 + timedelta(hours=24, minutes=59), 1, release)
    assert s.state is State.RELEASING
    s = step(s, CLEAN, T0 + timedelta(hours=25), 1, release)
    assert s.state is State.CLEAN and s.code is None


answer = st.sampled_from([LISTED, CLEAN, TIMEOUT, ERROR, UNUSABLE])


@settings(max_examples=300, deadline=None)
@given(st.lists(answer, max_size=40), st.integers(1, 4), st.integers(0, 6))
def test_hysteresis_properties(answers: list[Classified], confirmations: int, release_hours: int) -> None:
    release = timedelta(hours=release_hours)
    states = run(answers, confirmations, release)
    for i, s in enumerate(states):
        seen = answers[i]
        before = states[i - 1].state if i else State.UNKNOWN
        if s.state is State.LISTED and not before.listed:
            # a new listing needs `confirmations` listed answers in a row, ignoring non-answers
            real = [a for a in answers[:i + 1] if a.result in (Result.LISTED, Result.NOT_LISTED)]
            assert real[-confirmations:] == [LISTED] * confirmations
        if s.state is State.CLEAN and before is not State.CLEAN:
            assert seen is CLEAN  # only a real "not listed" answer makes an address clean
        if before.listed and not s.state.listed:
            assert seen is CLEAN
            gone = max(j for j in range(i) if states[j].state is State.RELEASING and (
                j == 0 or states[j - 1].state is State.LISTED))
            assert i - gone >= release_hours  # one answer an hour
        if seen.result in (Result.UNKNOWN, Result.ERROR, Result.UNUSABLE):
            assert s.state is before


def test_quarantine_needs_min_listings_in_zones_acted_on() -> None:
    listed, clean = ZoneState(State.LISTED), ZoneState(State.CLEAN)
    releasing = ZoneState(State.RELEASING)
    row = {"a.test": listed, "b.test": clean, "c.test": releasing}
    assert quarantine(row, ["a.test", "b.test", "c.test"], True, 2).quarantined
    assert quarantine(row, ["a.test", "b.test", "c.test"], True, 2).zones == ("a.test", "c.test")
    assert not quarantine(row, ["a.test", "b.test", "c.test"], True, 3).quarantined
    assert not quarantine(row, ["b.test"], True, 1).quarantined
    assert not quarantine(row, ["a.test"], False, 1).quarantined


def spec(**dnsbl: object) -> IpPoolSpec:
    return IpPoolSpec.model_validate({
        "addresses": ["127.0.20.1", "127.0.20.2"],
        "dnsbl": {"zones": ["bl.test", "all.test"], "confirmations": 1, **dnsbl},
        "quarantine": {"releaseAfter": "2h"}})


def test_pool_view_status_condition_and_events() -> None:
    config = pool_config("p", spec())
    passed, failed = self_test(LISTED, CLEAN), self_test(LISTED, LISTED)
    tests = {"bl.test": passed, "all.test": failed}
    answers = {("127.0.20.1", "bl.test"): LISTED, ("127.0.20.2", "bl.test"): CLEAN,
               ("127.0.20.1", "all.test"): LISTED, ("127.0.20.2", "all.test"): LISTED}
    view = advance(config, PoolView(), tests, answers, T0)
    assert view.quarantined("127.0.20.1") and not view.quarantined("127.0.20.2")
    fields = address_fields(config, view, "127.0.20.2")
    # the zone that lists everything moves nothing: Unknown, answer marked Unusable
    assert {b["zone"]: (b["state"], b["result"]) for b in fields["blocklists"]} == {
        "bl.test": ("Clean", "NotListed"), "all.test": ("Unknown", "Unusable")}
    assert address_fields(config, view, "127.0.20.1")["listings"] == ["bl.test"]
    assert degraded(view)[:3] == ("Degraded", "True", "AddressesQuarantined")
    assert "127.0.20.1 (listed in bl.test)" in degraded(view)[3] and "all.test" in degraded(view)[3]
    reasons = [e.reason for e in transitions(config, PoolView(), view)]
    assert sorted(reasons) == ["BlocklistZoneUnusable", "Listed", "Quarantined"]

    later = advance(config, view, tests, {**answers, ("127.0.20.1", "bl.test"): CLEAN}, T0 + timedelta(hours=1))
    assert later.quarantined("127.0.20.1")  # listing gone, not yet for releaseAfter
    assert [e.reason for e in transitions(config, view, later)] == ["Delisted"]
    released = advance(config, later, tests, {**answers, ("127.0.20.1", "bl.test"): CLEAN}, T0 + timedelta(hours=3))
    assert not released.quarantined("127.0.20.1")
    assert [e.reason for e in transitions(config, later, released)] == ["ListingReleased", "QuarantineReleased"]
    assert degraded(released)[1] == "False"


def test_restart_resumes_from_published_status() -> None:
    config = pool_config("p", spec())
    view = advance(config, PoolView(), {"bl.test": self_test(LISTED, CLEAN), "all.test": self_test(LISTED, CLEAN)},
                   {("127.0.20.1", "bl.test"): LISTED}, T0)
    published = [{"address": a, **address_fields(config, view, a)} for a in config.addresses]
    resumed = restore(config, published)
    assert resumed.quarantined("127.0.20.1")
    assert resumed.states["127.0.20.1"]["bl.test"].since == T0


@settings(deadline=None)
@given(st.ip_addresses(), st.sampled_from(["bl.test", "zen.spamhaus.org", "a-b.c.d.test"]))
def test_the_query_question_is_the_one_dnspython_writes(address: object, zone: str) -> None:
    name = query_name(str(address), zone)
    assert question_wire(name) == dns.message.make_query(name, "A").to_wire()[12:]


def test_a_quarantine_changes_what_the_server_of_the_address_reads() -> None:
    """The server's reconcile renders the MTA config (quarantined per address) when its view changes."""
    from smtpinfra_operator.controllers.ippool import server_view
    from tests.operator.test_pool_view import A, state

    before = state({"127.0.30.1": A})
    after = state({"127.0.30.1": A})
    after.addresses[0]["quarantined"] = True
    assert server_view(before, "mail", "a", 1) != server_view(after, "mail", "a", 1)
    assert "True" in server_view(after, "mail", "a", 1)
