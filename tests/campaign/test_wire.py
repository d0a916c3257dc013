"""The direct writer against the `email`-package builder: the same message once parsed back, valid on the wire."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from smtpinfra_campaign.message import CampaignIdentity, Compliance, build_message
from smtpinfra_campaign.wire import MessageWriter

CAMPAIGN = CampaignIdentity("november", "tenant-alpha", "9f0c-uid", "alpha")
COMPLIANCE = Compliance(from_address="news@alpha.test", from_name="Alpha, Nouvelles d'été",
                        reply_to="help@alpha.test", postal_address="Alpha Ltd, 1 Rue de l'Été, Zürich",
                        unsubscribe_base_url="https://u.alpha.test/", unsubscribe_mailto="unsubscribe@alpha.test",
                        unsubscribe_key=b"unsubscribe-key")
PLAIN = Compliance(from_address="news@alpha.test", from_name=None, reply_to=None, postal_address="Alpha Ltd",
                   unsubscribe_base_url="https://u.alpha.test/", unsubscribe_mailto="unsubscribe@alpha.test",
                   unsubscribe_key=b"unsubscribe-key")
WRITER = MessageWriter(CAMPAIGN, COMPLIANCE)
PLAIN_WRITER = MessageWriter(CAMPAIGN, PLAIN)

# text that exercises the encoders: non-ASCII, '=', tabs and trailing spaces, leading dots, CR/LF mixes
_alphabet = st.sampled_from(["a", "Z", " ", "\t", ".", "=", "é", "€", "日", "😀", "\n", "\r\n", "\r", "-", "<", ">"])
bodies = st.lists(_alphabet | st.text(max_size=5), max_size=60).map("".join)
long_line = st.integers(min_value=900, max_value=3000).map(lambda n: ("x" * 10 + " ") * (n // 11) + "." * 5)
subjects = (st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=120)
            | st.sampled_from(["News for Zoë", "  two  spaces ", "a" * 1200, "日本語のニュース"]))
locals_ = st.sampled_from(["ann", "Ann.Smith", "o'brien", "x+tag", "user.1234567890"])
domains = st.sampled_from(["example.test", "Example.TEST", "mail.example.test"])


def _parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def _headers(msg: EmailMessage) -> list[tuple[str, str]]:
    """Every top-level header except those that differ by design (Date: the clock; the boundary)."""
    return sorted((k, str(v)) for k, v in msg.items() if k not in ("Date", "Content-Type"))


def _parts(msg: EmailMessage) -> list[tuple[str, dict[str, str], str, str]]:
    parts = list(msg.iter_parts()) if msg.is_multipart() else [msg]
    return [(p.get_content_type(), dict(p["Content-Type"].params), p["Content-Transfer-Encoding"], p.get_content())
            for p in parts]


def assert_valid_on_the_wire(raw: bytes) -> None:
    assert b"\n" not in raw.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in raw.replace(b"\r\n", b""), "bare CR"
    assert raw.endswith(b"\r\n")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n")), "line over 998 octets"
    raw.decode("ascii")  # 7-bit on the wire: no SMTPUTF8 or 8BITMIME needed


def assert_same_message(writer: MessageWriter, compliance: Compliance, address: str, subject: str, text: str | None,
          html: str | None) -> None:
    new = writer.write(address, subject, text, html)
    old = build_message(CAMPAIGN, compliance, address, subject, text, html).as_bytes()
    assert_valid_on_the_wire(new)
    a, b = _parse(new), _parse(old)
    assert not a.defects and all(not p.defects for p in a.walk())
    assert _headers(a) == _headers(b)
    assert a.get_content_type() == b.get_content_type()
    assert _parts(a) == _parts(b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(local=locals_, domain=domains, subject=subjects, text=bodies | long_line, html=bodies | long_line,
       which=st.sampled_from(["both", "text", "html"]))
@example(local="ann", domain="example.test", subject="Hi", text=".\n..leading dots\n.", html="<p>.</p>",
         which="both")
def test_writer_matches_the_email_package(local: str, domain: str, subject: str, text: str, html: str,
                                          which: str) -> None:
    assert_same_message(WRITER, COMPLIANCE, f"{local}@{domain}", subject, text if which != "html" else None,
          html if which != "text" else None)


@settings(max_examples=30, deadline=None)
@given(subject=subjects, text=bodies)
def test_writer_without_display_name_or_reply_to(subject: str, text: str) -> None:
    assert_same_message(PLAIN_WRITER, PLAIN, "b@example.test", subject, text, None)


def test_non_ascii_values_become_encoded_words() -> None:
    raw = WRITER.write("zoe@example.test", "Des nouvelles pour Zoë", "Bonjour Zoë", "<p>Zoë</p>")
    assert_valid_on_the_wire(raw)
    assert b"=?utf-8?" in raw.split(b"\r\n\r\n", 1)[0]
    msg = _parse(raw)
    assert msg["Subject"] == "Des nouvelles pour Zoë"
    assert msg["From"].addresses[0].display_name == "Alpha, Nouvelles d'été"
    assert "Bonjour Zoë" in msg.get_body(("plain",)).get_content()
    assert "Zürich" in msg.get_body(("html",)).get_content()


def test_long_body_lines_are_soft_broken() -> None:
    raw = WRITER.write("a@example.test", "s", "y" * 5000, None)
    assert_valid_on_the_wire(raw)
    assert _parse(raw).get_content().replace("\r\n", "\n").startswith("y" * 5000 + "\n")
