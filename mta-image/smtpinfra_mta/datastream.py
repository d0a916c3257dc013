"""SMTP DATA in large chunks: the end-of-data marker and dot-unstuffing found with bytes operations.

aiosmtpd reads DATA line by line, so its cost grows with the number of lines (a 100 KB newsletter is
~1,500 Python iterations). :class:`DataDecoder` takes whatever the socket delivered and finds
``<CRLF>.<CRLF>`` with ``bytes.find``, undoes dot-stuffing with ``bytes.replace`` and measures line
lengths with ``bytes.split`` (C loops), carrying at most four bytes across chunk boundaries.

The semantics are exactly those of the line reader it replaces (RFC 5321 4.1.1.4 and 4.5.2):

* only ``<CRLF>.<CRLF>`` ends the data (a bare LF or bare CR never delimits a line, so ``<LF>.<LF>``,
  ``<LF>.<CRLF>`` or ``<CR>.<CR>`` are message content: the SMTP smuggling defence), and a lone ``.<CRLF>``
  at the very start is an empty message;
* a leading dot is removed only at the start of a CRLF-delimited line;
* a line is "too long" when its length with the CRLF and before unstuffing exceeds the limit.

BDAT chunks (RFC 3030) carry the message unstuffed; :class:`LineMeter` applies the same line-length rule
to them. No I/O here: the protocol feeds chunks and acts on what comes back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_END = b"\r\n.\r\n"
_STUFFED = b"\r\n."  # every line starting with a dot lost one (RFC 5321 4.5.2); the end marker is cut first


@dataclass
class Fed:
    """What one chunk yielded: message bytes (unstuffed), raw bytes they came from, and the end if reached."""

    data: bytes
    raw_size: int
    done: bool
    rest: bytes  # bytes after the end-of-data marker (pipelined commands); empty until ``done``


class DataDecoder:
    """Incremental DATA decoder; see the module docstring for the exact rules."""

    def __init__(self, line_length_limit: int) -> None:
        # A virtual CRLF before the first byte makes "." and ".." at the very start ordinary line starts.
        self._carry = b"\r\n"
        self._skip = 2
        self._lines = LineMeter(line_length_limit)

    @property
    def too_long(self) -> bool:
        return self._lines.too_long

    def feed(self, chunk: bytes) -> Fed:
        buf = self._carry + chunk if self._carry else chunk
        end = buf.find(_END)
        if end >= 0:
            cut, rest, done = end + 2, buf[end + 5:], True
        else:
            cut, rest, done = _safe_cut(buf), b"", False
        raw = buf[:cut]
        self._carry = b"" if done else buf[cut:]
        self._lines.feed(raw)
        if self._skip:
            skip = min(self._skip, len(raw))
            self._skip -= skip
            raw_size = len(raw) - skip
            out = raw.replace(_STUFFED, b"\r\n")[skip:]
        else:
            raw_size = len(raw)
            out = raw.replace(_STUFFED, b"\r\n")
        return Fed(out, raw_size, done, rest)


class LineMeter:
    """Whether any CRLF-delimited line (with its CRLF) is longer than the limit, fed in arbitrary pieces."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.too_long = False
        self._line = 0  # length of the unfinished line so far
        self._cr = False  # the last piece ended with a CR (counted in ``_line``)

    def feed(self, raw: bytes) -> None:
        if self.too_long or not raw:
            return
        if self._cr and raw[:1] == b"\n":  # a CRLF split between two pieces ends the line
            if self._line + 1 > self.limit:
                self.too_long = True
                return
            self._line, raw = 0, raw[1:]
        self._cr = raw.endswith(b"\r")
        lines = raw.split(b"\r\n")
        if len(lines) == 1:
            self._line += len(raw)
        else:
            longest = max(self._line + len(lines[0]), max(map(len, lines[1:-1]), default=0)) + 2
            self._line = len(lines[-1])
            if longest > self.limit:
                self.too_long = True
        if self._line - self._cr >= self.limit:  # even with its CRLF next, this line is already too long
            self.too_long = True


def _safe_cut(buf: bytes) -> int:
    """Where ``buf`` may be split when it holds no end marker: before any CRLF (or final CR) in its last
    four bytes, since only there can an end marker or a stuffed dot begin and continue in the next chunk."""
    tail = max(len(buf) - 4, 0)
    i = buf.find(b"\r\n", tail)
    if i >= 0:
        return i
    if buf.endswith(b"\r"):
        return len(buf) - 1
    return len(buf)


def parse_bdat(arg: str) -> tuple[int, bool] | None:
    """``BDAT <chunk-size> [LAST]`` arguments as (size, last), or None when malformed (RFC 3030 2)."""
    parts = arg.split()
    if not 1 <= len(parts) <= 2 or not parts[0].isascii() or not parts[0].isdigit() or len(parts[0]) > 12:
        return None
    if len(parts) == 2 and parts[1].upper() != "LAST":
        return None
    return int(parts[0]), len(parts) == 2


_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")


def normalize_line_endings(content: bytes) -> bytes:
    """Every bare CR or LF made a CRLF, and a final CRLF ensured, so no next hop can split lines (or find an
    end of data) where we did not. Three ``bytes.count`` calls show the common case needs no rewrite."""
    crlf = content.count(b"\r\n")
    if content.count(b"\n") != crlf or content.count(b"\r") != crlf:
        content = _LINE_ENDINGS.sub(b"\r\n", content)
    return content if content.endswith(b"\r\n") else content + b"\r\n"


def encode_for_data(content: bytes) -> bytes:
    """What follows a DATA command's 354: normalized lines, a dot doubled at the start of each line that has
    one, and the end-of-data line (RFC 5321 4.5.2)."""
    stuffed = (b"\r\n" + normalize_line_endings(content)).replace(b"\r\n.", b"\r\n..")
    return stuffed[2:] + b".\r\n"
