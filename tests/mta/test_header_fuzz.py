"""Property test of the submission header parser and identity check: any bytes get a verdict, never a crash."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from smtpinfra_mta.config import Tenant
from smtpinfra_mta.headers import HeaderError, HeaderLimits, parse_headers
from smtpinfra_mta.policy import check_identity

TENANT = Tenant(name="acme", sender_domains=["acme.example.com"], pool="p")
PIECES = [b"From:", b"from: ", b"Sender: ", b"Reply-To: ", b"\r\n", b"\n", b"\r\n ", b"\r\n\t", b"\r\n\r\n", b" ",
          b"<", b">", b"\"", b"\\", b"(", b")", b",", b";", b":", b"@", b".", b"=?utf-8?q?", b"?=", b"=?x?b?",
          b"news", b"acme.example.com", b"victim.test", b"\0", b"\r", b"\xff", b"\xc3\xa9", b"[127.0.0.1]", b"a" * 300]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=60))
def test_any_header_gets_a_verdict(pieces: list[bytes]) -> None:
    message = b"From: " + b"".join(pieces) + b"\r\n\r\nbody\r\n"
    try:
        headers = parse_headers(message, HeaderLimits())
    except HeaderError as exc:
        assert exc.reply[:3] in ("550", "552") and exc.reply[4:5] == "5"
        return
    refusal, domain = check_identity(headers, TENANT)
    if refusal is None:
        # Accepted: exactly one From, and its one address is the tenant's.
        assert len(headers.get_all("From")) == 1
        assert domain == "acme.example.com" or domain.endswith(".acme.example.com")
    else:
        assert refusal.startswith("550 5.7.1 Header ")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_get_a_verdict(data: bytes) -> None:
    try:
        headers = parse_headers(data, HeaderLimits())
    except HeaderError:
        return
    refusal, _ = check_identity(headers, TENANT)
    assert refusal is None or refusal.startswith("550 5.7.1 Header "), refusal
