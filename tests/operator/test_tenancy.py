"""The tenancy decisions (pure): overlapping sender domains, namespace claims, credentials checks."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from smtpinfra_mta.config import credential_problem
from smtpinfra_mta.passwords import hash_password
from smtpinfra_operator.tenancy import (
    Refusal,
    TenantFacts,
    all_facts,
    check_credentials,
    describe_overlaps,
    domain_key,
    namespace_claim,
)
from smtpinfra_operator.tenant_index import domain_conflicts


def facts(name: str, *domains: str, created: str = "2026-01-01T00:00:00Z", namespace: str | None = None,
          uid: str | None = None) -> TenantFacts:
    return TenantFacts(name=name, uid=uid or f"uid-{name}", created=created,
                       namespace=namespace or f"tenant-{name}", domains=domains)


@pytest.mark.parametrize(("given", "key"), [
    ("Example.COM", "example.com"),
    ("example.com.", "example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("BÜCHER.example.", "xn--bcher-kva.example"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
])
def test_domain_key_compares_case_insensitive_without_trailing_dot_as_a_labels(given, key):
    assert domain_key(given) == key


@pytest.mark.parametrize(("older", "newer", "overlap"), [
    ("co.uk", "x.co.uk", "sender domain x.co.uk is a subdomain of co.uk, which belongs to Tenant a"),
    ("x.co.uk", "co.uk", "sender domain co.uk is a parent of x.co.uk, which belongs to Tenant a"),
    ("example.com", "example.com", "sender domain example.com belongs to Tenant a"),
    ("example.com", "EXAMPLE.com.", "sender domain EXAMPLE.com. belongs to Tenant a"),
    ("bücher.example", "xn--bcher-kva.example", "sender domain xn--bcher-kva.example belongs to Tenant a"),
    ("example.com", "deep.mail.example.com", "sender domain deep.mail.example.com is a subdomain of example.com"),
    ("example.com", "notexample.com", None),
    ("example.com", "example.co", None),
    ("mail.example.com", "news.example.com", None),
])
def test_overlapping_domains_refuse_the_newer_tenant_and_note_the_older(older, newer, overlap):
    verdicts = domain_conflicts([facts("b", newer, created="2026-01-02T00:00:00Z"),
                                 facts("a", older, created="2026-01-01T00:00:00Z")])
    if overlap is None:
        assert verdicts == {}
        return
    assert verdicts["b"].with_older[0].describe().startswith(overlap)
    assert verdicts["b"].with_newer == ()
    assert [o.other for o in verdicts["a"].with_newer] == ["b"]
    assert verdicts["a"].with_older == ()


def test_same_second_is_decided_by_name_and_a_tenants_own_domains_never_conflict():
    same = "2026-01-01T00:00:00Z"
    verdicts = domain_conflicts([facts("zeta", "a.example", created=same),
                                 facts("alpha", "example", "a.example", "b.a.example", created=same)])
    assert verdicts["zeta"].with_older and not verdicts["zeta"].with_newer
    assert {o.other for o in verdicts["zeta"].with_older} == {"alpha"}
    assert not verdicts["alpha"].with_older


def test_every_live_tenant_counts_so_a_third_does_not_flip_with_the_second():
    """a owns x.test; b (refused for x.test) also claims y.test; c claims y.test: c is refused by b."""
    verdicts = domain_conflicts([facts("a", "x.test", created="1"), facts("b", "x.test", "y.test", created="2"),
                                 facts("c", "y.test", created="3")])
    assert {o.other for o in verdicts["c"].with_older} == {"b"}
    assert {o.other for o in verdicts["b"].with_newer} == {"c"}


def test_a_parent_domain_is_refused_against_every_older_subdomain():
    verdicts = domain_conflicts([facts("a", "x.co.uk", created="1"), facts("b", "y.co.uk", created="2"),
                                 facts("c", "co.uk", created="3")])
    assert "b" not in verdicts or not verdicts["b"].with_older
    assert {o.other for o in verdicts["c"].with_older} == {"a", "b"}


def test_a_domain_overlapping_hundreds_is_described_in_a_bounded_message():
    tenants = [facts(f"t{i:03d}", f"t{i:03d}.co.uk", created=f"{i:03d}") for i in range(300)]
    verdicts = domain_conflicts([*tenants, facts("greedy", "co.uk", created="999")])
    assert len(verdicts["greedy"].with_older) == 300
    message = describe_overlaps(verdicts["greedy"].with_older)
    assert message.endswith("; and 290 more") and len(message) < 2000
    assert "Tenant t000" in message


def test_facts_skip_deleted_and_malformed_tenants_and_sort_oldest_first():
    bodies: list[dict[str, Any]] = [
        {"metadata": {"name": "new", "uid": "1", "creationTimestamp": "2026-02-01T00:00:00Z"},
         "spec": {"senderDomains": ["n.test"], "namespace": "shop"}},
        {"metadata": {"name": "old", "uid": "2", "creationTimestamp": "2026-01-01T00:00:00Z"},
         "spec": {"senderDomains": ["o.test"]}},
        {"metadata": {"name": "gone", "uid": "3", "deletionTimestamp": "x"}, "spec": {"senderDomains": ["g.test"]}},
        {"metadata": {"name": "broken", "uid": "4"}, "spec": {"senderDomains": "b.test"}},
    ]
    got = all_facts(bodies)
    assert [(f.name, f.namespace) for f in got] == [("old", "tenant-old"), ("new", "shop")]


def namespace(name: str, labels: dict[str, str] | None = None, owner: tuple[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Tenant", "name": owner[0],
                                    "uid": owner[1], "controller": True}]
    return {"metadata": meta}


ACME = facts("acme", "acme.test", created="1")
EVIL = facts("evil", "evil.test", created="2")


@pytest.mark.parametrize(("tenant", "existing", "others", "expected"), [
    (ACME, None, [], "create"),
    (ACME, namespace("tenant-acme", owner=("acme", "uid-acme")), [], "owned"),
    (ACME, namespace("tenant-acme", {"smtpinfra.com/tenant": "acme"}), [], "adopted"),
    # a Tenant made again under the same name has another uid: the old one's namespace is not its own
    (facts("acme", "a.test", uid="new"), namespace("tenant-acme", owner=("acme", "uid-acme")), [],
     "NamespaceOwnedByAnotherTenant"),
    (facts("evil", "e.test", namespace="tenant-acme"), namespace("tenant-acme", {"smtpinfra.com/tenant": "evil"},
                                                                 owner=("acme", "uid-acme")), [ACME],
     "NamespaceOwnedByAnotherTenant"),
    (facts("evil", "e.test", namespace="payments"), namespace("payments"), [], "NamespaceNotOwned"),
    (facts("evil", "e.test", namespace="payments"), namespace("payments", {"smtpinfra.com/tenant": "acme"}), [],
     "NamespaceNotOwned"),
    (facts("evil", "e.test", namespace="kube-system"), None, [], "NamespaceNotAllowed"),
    (facts("evil", "e.test", namespace="kube-public"), namespace("kube-public", {"smtpinfra.com/tenant": "evil"}),
     [], "NamespaceNotAllowed"),
    (facts("evil", "e.test", namespace="default"), None, [], "NamespaceNotAllowed"),
    (facts("evil", "e.test", namespace="smtp-infra-system"), None, [], "NamespaceNotAllowed"),
    # two tenants naming a namespace nobody made yet: the older one gets it
    (facts("evil", "e.test", namespace="shared", created="2"), None, [facts("acme", "a.test", namespace="shared",
                                                                            created="1")],
     "NamespaceOwnedByAnotherTenant"),
    (facts("acme", "a.test", namespace="shared", created="1"), None, [facts("evil", "e.test", namespace="shared",
                                                                            created="2")], "create"),
])
def test_namespace_claims(tenant, existing, others, expected):
    got = namespace_claim(tenant, existing, [tenant, *others], "smtp-infra-system")
    if isinstance(got, Refusal):
        assert got.reason == expected
        assert tenant.namespace in got.message
    else:
        assert got == expected


def test_refusals_name_the_owner_and_the_adoption_label():
    owned = namespace_claim(EVIL, namespace("tenant-evil", owner=("acme", "uid-acme")), [ACME, EVIL], None)
    assert isinstance(owned, Refusal) and "Tenant acme" in owned.message
    foreign = namespace_claim(facts("evil", "e.test", namespace="payments"), namespace("payments"), [], None)
    assert isinstance(foreign, Refusal) and "smtpinfra.com/tenant=evil" in foreign.message
    assert namespace_claim(facts("x", "x.test", namespace="ops"), None, [], None) == "create"


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


GOOD_HASH = hash_password("p" * 32, "hmac-sha256")
SCRYPT_HUGE = "$scrypt$ln=14,r=999,p=999$c2FsdHNhbHRzYWx0$" + "A" * 43


@pytest.mark.parametrize(("username", "password_hash", "problem"), [
    (b"acme", GOOD_HASH.encode(), None),
    (b"acme", hash_password("chosen", "scrypt").encode(), None),
    (b"acme\nroot", GOOD_HASH.encode(), "username"),
    (b"acme:x", GOOD_HASH.encode(), "username"),
    (b"acme ", GOOD_HASH.encode(), "username"),
    (b"acm\xe9", GOOD_HASH.encode(), "not UTF-8"),
    (b"acme", b"\xff\xfe", "not UTF-8"),
    (b"acme", SCRYPT_HUGE.encode(), "r=999"),
    (b"acme", b"$scrypt$ln=20,r=8,p=1$c2FsdA$" + b"A" * 43, "MiB"),
    (b"acme", b"$pbkdf2-sha256$900000000$c2FsdA$" + b"A" * 43, "rounds"),
    (b"acme", GOOD_HASH.encode() + b"\nmallory:" + GOOD_HASH.encode(), "one line"),
    (b"acme", b"plaintext", "not a supported"),
    (b"", GOOD_HASH.encode(), "missing"),
    (b"globex", GOOD_HASH.encode(), "must be the tenant's name"),
])
def test_credentials_secret_checks(username, password_hash, problem):
    secret = {"data": {k: b64(v) for k, v in (("username", username), ("passwordHash", password_hash)) if v}}
    checked = check_credentials("acme", secret)
    if problem is None:
        assert checked.problem is None
        assert checked.line == f"acme:{password_hash.decode()}\n"
        return
    assert checked.line is None and checked.problem is not None
    assert checked.problem.reason == "InvalidCredentials"
    assert problem in checked.problem.message
    assert "smtp-credentials" in checked.problem.message
    assert "mallory" not in checked.problem.message and "plaintext" not in checked.problem.message


def test_credential_problem_accepts_what_hash_password_makes_by_default():
    for scheme in ("scrypt", "pbkdf2-sha256", "hmac-sha256"):
        assert credential_problem("acme", hash_password("q" * 24, scheme)) is None
