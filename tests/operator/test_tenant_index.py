"""The Tenant index: every tenant's domain overlaps without reading every Tenant, kept by informer events.

Overlaps are checked against a brute-force rule over every pair (hypothesis), and the index
against the events the Tenant informer gives it (added, changed, deleted, late copies)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from smtpinfra_operator.tenancy import TenantFacts, domain_key
from smtpinfra_operator.tenant_index import TenantIndex, domain_conflicts

LABELS = st.sampled_from(["a", "b", "co", "uk", "Mail", "xn--bcher-kva", "bücher"])
DOMAINS = st.lists(LABELS, min_size=1, max_size=3).map(".".join) | st.lists(LABELS, min_size=1, max_size=3).map(
    lambda labels: ".".join(labels).upper() + ".")


def overlaps(a: str, b: str) -> bool:
    x, y = domain_key(a), domain_key(b)
    return x == y or x.endswith("." + y) or y.endswith("." + x)


def brute_force(tenants: list[TenantFacts]) -> dict[str, tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]]:
    """Every pair of tenants, every pair of their domains: (older overlaps, newer overlaps) per tenant."""
    out: dict[str, tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]] = {}
    for t in tenants:
        older: list[tuple[str, str, str]] = []
        newer: list[tuple[str, str, str]] = []
        for o in tenants:
            if o.name == t.name:
                continue
            for d in dict.fromkeys(t.domains):  # as written; the same string twice counts once
                for od in dict.fromkeys(o.domains):
                    if overlaps(d, od):
                        (older if o.order < t.order else newer).append((d, o.name, od))
        if older or newer:
            out[t.name] = (sorted(older), sorted(newer))
    return out


@st.composite
def tenant_lists(draw: Any) -> list[TenantFacts]:
    names = draw(st.lists(st.sampled_from("abcdefgh"), min_size=0, max_size=8, unique=True))
    return [TenantFacts(name=n, uid=f"uid-{n}", created=draw(st.sampled_from(["1", "2", "3"])),
                        namespace=f"tenant-{n}", domains=tuple(draw(st.lists(DOMAINS, min_size=1, max_size=3))))
            for n in names]


@settings(max_examples=300, deadline=None)
@given(tenant_lists())
def test_verdicts_are_every_overlapping_pair_split_by_age(tenants):
    got = {name: (sorted((o.domain, o.other, o.other_domain) for o in v.with_older),
                  sorted((o.domain, o.other, o.other_domain) for o in v.with_newer))
           for name, v in domain_conflicts(tenants).items()}
    assert got == brute_force(tenants)


def body(name: str, *domains: str, version: int, created: str = "1", namespace: str | None = None,
         refused: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"senderDomains": list(domains)}
    if namespace:
        spec["namespace"] = namespace
    return {"metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": created,
                         "resourceVersion": str(version)},
            "spec": spec, "status": {"refused": refused}}


def index() -> TenantIndex:
    return TenantIndex(refused=lambda b: bool((b.get("status") or {}).get("refused")))


def test_events_keep_the_index_as_the_informer_sees_the_tenants():
    idx = index()
    idx.observe("ADDED", body("a", "x.test", version=1, created="1"))
    idx.observe("ADDED", body("b", "mail.x.test", version=2, created="2"))
    b = idx.facts()[1]
    assert [(o.other, o.other_domain) for o in idx.verdict(b).with_older] == [("a", "x.test")]
    assert idx.related("a") == {"b"}

    idx.observe("MODIFIED", body("a", "y.test", version=3, created="1"))  # a gave up x.test
    assert idx.verdict(b) == idx.verdict(b).__class__()
    assert idx.related("a") == set()
    idx.observe("MODIFIED", body("a", "x.test", version=2, created="1"))  # a late copy: ignored
    assert [f.domains for f in idx.facts()] == [("y.test",), ("mail.x.test",)]

    idx.observe("DELETED", body("a", "y.test", version=4, created="1"))
    idx.observe("ADDED", body("a", "x.test", version=3, created="1"))  # older than its deletion
    assert [f.name for f in idx.facts()] == ["b"]


def test_a_tenant_asks_with_its_spec_as_read_not_as_indexed():
    idx = index()
    idx.observe("ADDED", body("a", "x.test", version=1, created="1"))
    idx.observe("ADDED", body("b", "old.test", version=2, created="2"))
    fresh = TenantFacts(name="b", uid="uid-b", created="2", namespace="tenant-b", domains=("X.test.",))
    assert [o.other for o in idx.verdict(fresh).with_older] == ["a"]  # never overlaps its own indexed copy


def test_claimants_of_a_namespace_oldest_first_and_refused_tenants_are_related_to_anyone():
    idx = index()
    idx.observe("ADDED", body("late", "l.test", version=1, created="3", namespace="shop"))
    idx.observe("ADDED", body("early", "e.test", version=2, created="1", namespace="shop"))
    idx.observe("ADDED", body("waiting", "w.test", version=3, created="2", refused=True))
    assert [f.name for f in idx.claimants("shop")] == ["early", "late"]
    assert idx.claimants("nobody") == []
    assert idx.related("early") == {"waiting"}
    idx.observe("MODIFIED", body("waiting", "w.test", version=4, created="2"))
    assert idx.related("early") == set()


def test_an_index_built_from_objects_equals_one_fed_by_events():
    bodies = [body("a", "x.test", version=1, created="1"), body("b", "x.test", version=2, created="2"),
              {"metadata": {"name": "gone", "resourceVersion": "3", "deletionTimestamp": "now"},
               "spec": {"senderDomains": ["x.test"]}}]
    idx = TenantIndex.of_bodies(bodies)
    assert [f.name for f in idx.facts()] == ["a", "b"]
    assert [o.other for o in idx.verdict(idx.facts()[1]).with_older] == ["a"]
