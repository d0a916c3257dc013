"""The built message: compliance headers from the shared contract, both bodies, the From rule."""

from __future__ import annotations

import email
import email.policy

import pytest

from smtpinfra_campaign.message import (
    CampaignIdentity,
    Compliance,
    SenderRefused,
    build_message,
    check_sender_domain,
)
from smtpinfra_mta import campaign_contract as contract

CAMPAIGN = CampaignIdentity("november", "tenant-alpha", "9f0c-uid", "alpha")
SERVER_KEY = b"unsubscribe-key"
KEY = contract.sender_key(SERVER_KEY, "alpha", "tenant-alpha")
"""What the operator gives this campaign's sender; the MTA pods hold SERVER_KEY."""
COMPLIANCE = Compliance(from_address="news@alpha.test", from_name="Alpha, News", reply_to="help@alpha.test",
                        postal_address="Alpha Ltd, 1 Test Street", unsubscribe_base_url="https://u.alpha.test/",
                        unsubscribe_mailto="unsubscribe@alpha.test", unsubscribe_key=KEY)


def _parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_every_compliance_header_and_both_bodies():
    raw = build_message(CAMPAIGN, COMPLIANCE, "Ann@Example.test", "Hi Ann", "Hello", "<p>Hello</p>").as_bytes()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    msg = _parse(raw)
    assert msg["From"] == '"Alpha, News" <news@alpha.test>'
    assert msg["To"] == "Ann@Example.test"
    assert msg["Reply-To"] == "help@alpha.test"
    assert msg["Subject"] == "Hi Ann"
    assert msg["Message-ID"] == contract.message_id("9f0c-uid", "Ann@Example.test", "alpha.test")
    assert msg["X-Idempotency-Key"] == contract.idempotency_key("9f0c-uid", "Ann@Example.test")
    assert msg["Feedback-ID"] == "november:alpha:tenant-alpha:smtpinfra"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https, mailto = (part.strip() for part in msg["List-Unsubscribe"].split(","))
    assert https.startswith("<https://u.alpha.test/unsubscribe/") and https.endswith(">")
    token = https[1:-1].rsplit("/", 1)[1]
    assert mailto == f"<mailto:unsubscribe@alpha.test?subject=unsubscribe%20{token}>"
    assert contract.verify_unsubscribe([SERVER_KEY], token) == contract.Unsubscribe(
        "alpha", "tenant-alpha", "november", "Ann@example.test")
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "Alpha Ltd, 1 Test Street" in text and https[1:-1] in text
    assert "Alpha Ltd, 1 Test Street" in html and "Unsubscribe</a>" in html


def test_message_id_is_the_same_on_every_attempt():
    one = _parse(build_message(CAMPAIGN, COMPLIANCE, "b@example.test", "s", "t", None).as_bytes())
    two = _parse(build_message(CAMPAIGN, COMPLIANCE, "b@example.test", "s", "t", None).as_bytes())
    assert one["Message-ID"] == two["Message-ID"]
    assert one["X-Idempotency-Key"] == two["X-Idempotency-Key"]
    assert one.get_content_type() == "text/plain"


def test_from_must_be_in_a_tenant_domain():
    check_sender_domain("news@mail.alpha.test", ["alpha.test"])  # a subdomain is the tenant's too
    with pytest.raises(SenderRefused, match="not one of the tenant's sender domains"):
        check_sender_domain("news@evil.test", ["alpha.test"])
    with pytest.raises(SenderRefused):
        check_sender_domain("news@notalpha.test", ["alpha.test"])
