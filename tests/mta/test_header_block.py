"""`policy.header_block`: the header section found by byte search, the same as the plain definition."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from smtpinfra_mta.policy import count_header, header_block


def reference(content: bytes) -> bytes:
    """Up to and including the line ending before the first empty line (CRLF or bare LF), else everything."""
    if content.startswith((b"\r\n", b"\n")):
        return b""
    ends = [e for e in (content.find(b"\n\r\n"), content.find(b"\n\n")) if e >= 0]
    return content[: min(ends) + 1] if ends else content


pieces = st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b"Received: x", b"a", b": ", b" "]), max_size=40)


@given(pieces)
def test_header_block_matches_its_definition(parts: list[bytes]) -> None:
    content = b"".join(parts)
    assert header_block(content) == reference(content)


def test_a_bare_lf_blank_line_in_the_body_does_not_end_the_headers_early() -> None:
    message = b"Received: a\r\nReceived: b\r\nSubject: s\r\n\r\nbody\n\nReceived: c\r\n"
    assert header_block(message) == b"Received: a\r\nReceived: b\r\nSubject: s\r\n"
    assert count_header(message, b"Received") == 2
    assert header_block(b"Received: a\n\nReceived: b\r\n\r\n") == b"Received: a\n"
