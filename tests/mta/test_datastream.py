"""The chunked DATA decoder gives exactly what the line-by-line reader gave, however the bytes are split."""

from __future__ import annotations

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpinfra_mta.datastream import DataDecoder, encode_for_data, normalize_line_endings

LIMIT = 1001


def line_reader(stream: bytes, limit: int = LIMIT) -> tuple[bytes, bool, bytes] | None:
    """The reference: CRLF-delimited lines, ``.<CRLF>`` ends, a leading dot is removed from each line.

    Returns (message, a line was too long, bytes after the end) or None when the stream holds no end.
    """
    out: list[bytes] = []
    too_long = False
    pos = 0
    while True:
        i = stream.find(b"\r\n", pos)
        if i < 0:
            return None
        line = stream[pos:i + 2]
        pos = i + 2
        if line == b".\r\n":
            return b"".join(out), too_long, stream[pos:]
        too_long = too_long or len(line) > limit
        out.append(line[1:] if line.startswith(b".") else line)


def decode(stream: bytes, cuts: list[int], limit: int = LIMIT) -> tuple[bytes, bool, bytes] | None:
    d = DataDecoder(limit)
    out: list[bytes] = []
    raw = 0
    bounds = sorted({c for c in cuts if 0 < c < len(stream)})
    for a, b in zip([0, *bounds], [*bounds, len(stream)], strict=True):
        fed = d.feed(stream[a:b])
        out.append(fed.data)
        raw += fed.raw_size
        if fed.done:
            body = b"".join(out)
            rest = fed.rest + stream[b:]
            assert raw == len(stream) - len(rest) - 3  # raw bytes before the final ".\r\n"
            return body, d.too_long, rest
    return None


# Alphabet rich in the bytes that matter: CR, LF, dots, and a filler.
_pieces = st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"a", b"\r\n.", b"\r\n..", b".\r\n", b"x" * 40])
streams = st.lists(_pieces, max_size=60).map(b"".join)


@settings(max_examples=800, deadline=None)
@given(streams, st.lists(st.integers(min_value=0, max_value=3000), max_size=12), st.integers(5, 60))
def test_same_result_as_the_line_reader_for_any_split(body: bytes, cuts: list[int], limit: int) -> None:
    stream = body + b"\r\n.\r\nQUIT\r\n"
    assert decode(stream, cuts, limit) == line_reader(stream, limit)


@pytest.mark.parametrize("stream", [
    b".\r\n",                       # an empty message
    b"..\r\n.\r\n",                 # a line that is one (stuffed) dot
    b"a\n.\nb\r\n.\r\n",            # LF.LF is content, not the end
    b"a\r.\rb\r\n.\r\n",            # CR.CR is content, not the end
    b"a\n.\r\nb\r\n.\r\n",          # LF.CRLF is content, not the end
    b"a\r\n.\nb\r\n.\r\n",          # CRLF.LF is content, not the end
    b"..a\r\n...b\r\n\r\n..\r\n.\r\nMAIL FROM:<x@y>\r\n",
])
def test_smuggling_and_stuffing_cases(stream: bytes) -> None:
    expected = line_reader(stream)
    assert expected is not None
    for step in (1, 2, 3, 4, 5, len(stream)):
        assert decode(stream, list(range(step, len(stream), step))) == expected, step


def test_bare_lf_end_does_not_end_data() -> None:
    d = DataDecoder(LIMIT)
    fed = d.feed(b"Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@x>\r\n")
    assert not fed.done
    fed2 = d.feed(b".\r\n")
    assert fed2.done
    assert fed.data + fed2.data == b"Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@x>\r\n"


def test_long_line_detected_across_chunks() -> None:
    d = DataDecoder(1001)
    d.feed(b"a" * 600)
    assert not d.too_long
    d.feed(b"a" * 399 + b"\r\n")  # 999 + CRLF = 1001: allowed
    assert not d.too_long
    d.feed(b"b" * 1000)
    d.feed(b"\r\n.\r\n")  # 1002 with its CRLF
    assert d.too_long


def test_tail_of_an_overlong_line_is_not_the_end() -> None:
    d = DataDecoder(1001)
    fed = d.feed(b"x" * 70_000 + b".\r\n")
    assert not fed.done and d.too_long
    assert d.feed(b"\r\n.\r\n").done


def test_many_lines_in_one_chunk() -> None:
    """20,000 short lines with leading dots in one chunk: every stuffed dot removed, nothing else changed."""
    lines = [b"." * (i % 7) + b"x" * (i % 90 + 1) + b"\r\n" for i in range(20_000)]
    stream = b"".join(lines) + b".\r\n"
    fed = DataDecoder(LIMIT).feed(stream)
    assert fed.done
    assert fed.data == b"".join(x[1:] if x.startswith(b".") else x for x in lines)


@settings(max_examples=500, deadline=None)
@given(st.lists(_pieces, max_size=60).map(b"".join))
def test_data_encoding_matches_aiosmtplib_and_decodes_back(content: bytes) -> None:
    """Our DATA encoding sends what aiosmtplib's did (bare CR/LF made CRLF, leading dots doubled), and our
    receiving side turns it back into the normalized message."""
    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(content)) + b".\r\n"
    encoded = encode_for_data(content)
    assert encoded == expected
    assert normalize_line_endings(content) == normalize_message_line_endings(content)
    fed = DataDecoder(1 << 20).feed(encoded)
    assert fed.done and fed.rest == b""
    assert fed.data == normalize_message_line_endings(content)
