"""The sender/MTA campaign contract: tokens verify only unaltered, tags parse only our own form."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from smtpinfra_mta import campaign_contract as cc

ACME = cc.sender_key(b"k1", "acme", "mail")
"""What acme's campaigns in namespace mail sign with; the server holds k1."""


def test_unsubscribe_token_round_trips_and_names_the_recipient() -> None:
    token = cc.sign_unsubscribe(ACME, "acme", "mail", "spring", "Ann@Example.COM")
    assert cc.verify_unsubscribe([b"old", b"k1"], token) == cc.Unsubscribe("acme", "mail", "spring", "Ann@example.com")


def test_a_tenants_sender_key_signs_for_that_tenant_and_namespace_only() -> None:
    """The sender key sits in the tenant's namespace; with it, no link of another tenant or namespace verifies."""
    assert ACME not in (b"k1", cc.sender_key(b"k1", "beta", "mail"), cc.sender_key(b"k1", "acme", "other"))
    for tenant, namespace in (("beta", "beta-mail"), ("beta", "mail"), ("acme", "other")):
        forged = cc.sign_unsubscribe(ACME, tenant, namespace, "spring", "victim@example.com")
        assert cc.verify_unsubscribe([b"k1"], forged) is None, (tenant, namespace)
    assert cc.verify_unsubscribe([b"k1"], cc.sign_unsubscribe(b"k1", "acme", "mail", "spring", "a@example.com")) is None


def test_a_token_signed_with_another_key_or_altered_is_refused() -> None:
    token = cc.sign_unsubscribe(ACME, "acme", "mail", "spring", "ann@example.com")
    assert cc.verify_unsubscribe([b"k2"], token) is None
    payload, mac = token.split(".")
    forged = cc.sign_unsubscribe(ACME, "acme", "mail", "spring", "bob@example.com").split(".")[0]
    assert cc.verify_unsubscribe([b"k1"], f"{forged}.{mac}") is None
    assert cc.verify_unsubscribe([b"k1"], payload) is None
    assert cc.verify_unsubscribe([b"k1"], token + "x" * cc.MAX_TOKEN_LENGTH) is None


@given(st.text(max_size=300))
def test_any_text_as_a_token_is_refused_without_an_exception(text: str) -> None:
    assert cc.verify_unsubscribe([b"k1"], text) is None


def test_feedback_id_parses_only_our_four_field_form() -> None:
    value = cc.feedback_id("spring", "acme", "mail")
    assert cc.parse_feedback_id(value) == cc.CampaignTag("spring", "acme", "mail")
    assert cc.parse_feedback_id("spring:acme:mail:other") is None
    assert cc.parse_feedback_id("spring::mail:smtpinfra") is None
    assert cc.parse_feedback_id("a:b:c:d:smtpinfra") is None


def test_message_id_and_idempotency_key_are_stable_per_recipient_and_differ_between_recipients() -> None:
    a1 = cc.message_id("uid-1", "Ann@Example.com", "example.com")
    assert a1 == cc.message_id("uid-1", " Ann@EXAMPLE.com ", "example.com")
    assert a1 != cc.message_id("uid-1", "bob@example.com", "example.com")
    assert cc.idempotency_key("uid-1", "ann@example.com") != cc.idempotency_key("uid-2", "ann@example.com")


def test_erasure_hash_is_salted_and_matches_the_normalised_address() -> None:
    h = cc.erasure_hash(b"salt", "Ann@Example.com")
    assert h.startswith(cc.HASH_PREFIX) and "example" not in h
    assert h == cc.erasure_hash(b"salt", "Ann@example.COM")
    assert h != cc.erasure_hash(b"other", "Ann@Example.com")
