"""One bounded, linear parse of a submitted message's header section, reused by every check.

The email package parses a header again on each access, some of its value parsers are quadratic on
hostile input (an 80 KB folded header cost seconds, three times per message), and what it returns is
a re-serialisation that may drop text a receiver still reads (``From: a@x.test <b@y.test>`` became
``a@x.test``). Here the header section is split into raw fields in one pass with hard bounds, and the
identity fields (From, Sender, Reply-To) are read from their raw bytes with a strict grammar that
refuses anything ambiguous: comments, groups, route addresses, quoted or encoded local parts, several
addresses where one is expected, control characters, invalid UTF-8. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import decode_header, make_header

MAX_LINE = 998
"""RFC 5322 section 2.1.1: a line MUST be no more than 998 characters, excluding the CRLF."""
MAX_IDENTITY_FIELD = 4096
"""Longest From/Sender/Reply-To value (unfolded bytes): far beyond any real one, bounded for the grammar."""

_FIELD_NAME_RE = re.compile(rb"[!-9;-~]+")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDR_RE = re.compile(rf"({_ATEXT}+(?:\.{_ATEXT}+)*)@({_LABEL}(?:\.{_LABEL})+)")
_ADDRESS_LIKE_RE = re.compile(r"[^\s<>\"@]+@([A-Za-z0-9.-]+\.[A-Za-z0-9-]+)")
_SPECIALS = set('()<>[]:;@\\,"')
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class HeaderError(ValueError):
    """The header section is malformed or over a bound; ``reply`` is the complete SMTP refusal."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True)
class HeaderLimits:
    """Bounds of one header section; beyond them the message is refused, never parsed further."""

    max_bytes: int = 256 * 1024
    max_fields: int = 1000


@dataclass(frozen=True)
class Headers:
    """The raw fields of a header section, in order: (lower-case name, unfolded value bytes)."""

    fields: tuple[tuple[str, bytes], ...]
    size: int
    """Bytes of the header section (up to and including the empty line that ends it)."""

    def get_all(self, name: str) -> list[bytes]:
        key = name.lower()
        return [v for n, v in self.fields if n == key]

    def first(self, name: str) -> bytes | None:
        key = name.lower()
        return next((v for n, v in self.fields if n == key), None)

    def count(self, name: str) -> int:
        return len(self.get_all(name))


@dataclass(frozen=True)
class Mailbox:
    """One address from an identity field: display name (decoded), local part and lower-cased domain."""

    display: str
    local: str
    domain: str

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}"


def header_section_size(content: bytes, limit: int) -> int:
    """Length of the header section (through its terminating empty line), looking at most ``limit`` bytes.

    Returns ``limit + 1`` when no section end is found within the limit and the message is longer.
    """
    if content.startswith((b"\r\n", b"\n")):
        return 0
    window = limit + 3
    ends = [e + len(sep) for sep in (b"\n\r\n", b"\n\n") if (e := content.find(sep, 0, window)) >= 0]
    if ends:
        end = min(ends)
        return end if end <= limit else limit + 1
    return len(content) if len(content) <= limit else limit + 1


def parse_headers(content: bytes, limits: HeaderLimits) -> Headers:
    """Split the header section into raw unfolded fields; :class:`HeaderError` on any defect or bound.

    Linear in the size of the section, which is itself bounded, so the worst case is known.
    """
    size = header_section_size(content, limits.max_bytes)
    if size > limits.max_bytes:
        raise HeaderError(f"552 5.3.4 Message header section exceeds {limits.max_bytes} bytes")
    fields: list[tuple[str, bytearray]] = []
    for lineno, raw in enumerate(content[:size].split(b"\n"), 1):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue  # the terminating empty line (or the end of a message without body)
        folded = line[:1] in (b" ", b"\t")
        name, sep, value = line.partition(b":")
        field = fields[-1][0] if folded and fields else name.decode("ascii", "replace").lower()
        if len(line) > MAX_LINE:
            raise _defect(field, lineno, f"is longer than {MAX_LINE} characters")
        if b"\r" in line or b"\0" in line:
            raise _defect(field, lineno, "contains a bare CR or NUL")
        if folded:
            if not fields:
                raise HeaderError("550 5.6.0 The header section starts with a continuation line")
            fields[-1][1].extend(line)  # unfolding: remove the CRLF, keep the whitespace
            continue
        if not sep or not _FIELD_NAME_RE.fullmatch(name):
            raise _defect(field.strip(" \t"), lineno, "is not a 'Name: value' field")
        fields.append((field, bytearray(value)))
        if len(fields) > limits.max_fields:
            raise HeaderError(f"552 5.3.4 Message has more than {limits.max_fields} header fields")
    return Headers(tuple((n, bytes(v).strip(b" \t")) for n, v in fields), size)


IDENTITY_FIELDS = {"from": "From", "sender": "Sender", "reply-to": "Reply-To"}


def _defect(field: str, lineno: int, what: str) -> HeaderError:
    """A line defect; in an identity field it is refused as such (5.7.1 naming the field)."""
    if field in IDENTITY_FIELDS:
        return HeaderError(f"550 5.7.1 Header {IDENTITY_FIELDS[field]} is malformed: line {lineno} {what}")
    return HeaderError(f"550 5.6.0 Header line {lineno} {what}")


# --------------------------------------------------------------------------------------------- identity


def _text(value: bytes) -> str:
    if len(value) > MAX_IDENTITY_FIELD:
        raise ValueError(f"longer than {MAX_IDENTITY_FIELD} bytes")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not valid UTF-8") from None
    if _CONTROL_RE.search(text):
        raise ValueError("contains control characters")
    return text


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside quoted strings and angle brackets; comments are refused here."""
    parts: list[str] = []
    start, quoted, escaped, angle = 0, False, False, False
    for i, c in enumerate(text):
        if quoted:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c in "()":
            raise ValueError("comments are not accepted")
        elif c == "<":
            if angle:
                raise ValueError("nested '<'")
            angle = True
        elif c == ">":
            if not angle:
                raise ValueError("unmatched '>'")
            angle = False
        elif c == "," and not angle:
            parts.append(text[start:i])
            start = i + 1
    if quoted:
        raise ValueError("unterminated quoted string")
    if angle:
        raise ValueError("unterminated '<'")
    parts.append(text[start:])
    return parts


def _check_phrase(phrase: str) -> None:
    """A display name: atoms (UTF-8 allowed, '.' tolerated) and quoted strings, nothing else."""
    quoted, escaped = False, False
    for c in phrase:
        if quoted:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c in _SPECIALS:
            raise ValueError(f"{c!r} is not allowed in a display name (quote it)")


def _decoded_display(phrase: str) -> str:
    """The display name as a reader sees it: encoded-words decoded, quotes removed."""
    if "=?" not in phrase:
        return phrase.replace('"', "").replace("\\", "")
    try:
        shown = str(make_header(decode_header(phrase)))
    except (HeaderParseError, LookupError, UnicodeError, ValueError):
        raise ValueError("undecodable encoded-word in the display name") from None
    if _CONTROL_RE.search(shown):
        raise ValueError("the display name decodes to control characters")
    return shown


def _mailbox(element: str) -> Mailbox:
    s = element.strip(" \t")
    if not s:
        raise ValueError("empty address")
    m = _ADDR_RE.fullmatch(s)
    display = ""
    if m is None:
        lt = _unquoted_index(s, "<")
        if lt < 0:
            raise ValueError(f"{s[:80]!r} is not an address")
        gt = s.index(">", lt)
        if s[gt + 1:].strip(" \t"):
            raise ValueError("text after the address")
        phrase = s[:lt].strip(" \t")
        _check_phrase(phrase)
        display = _decoded_display(phrase) if phrase else ""
        addr = s[lt + 1:gt]
        m = _ADDR_RE.fullmatch(addr)
        if m is None:
            raise ValueError(f"<{addr[:80]}> is not a plain address (no routes, quoted local parts or literals)")
    local, domain = m.group(1), m.group(2).lower()
    if len(local) > 64 or len(local) + len(domain) > 253:
        raise ValueError("address too long")
    if "=?" in local:
        raise ValueError("encoded-word in the address")
    return Mailbox(display, local, domain)


def _unquoted_index(s: str, char: str) -> int:
    quoted, escaped = False, False
    for i, c in enumerate(s):
        if quoted:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == char:
            return i
    return -1


def mailboxes(value: bytes) -> list[Mailbox]:
    """The addresses of one raw From/Sender/Reply-To value; :class:`ValueError` saying what is wrong."""
    text = _text(value)
    return [_mailbox(part) for part in _split_top_level(text)]


def display_shows_address(box: Mailbox) -> str | None:
    """The domain of an address-like text in the display name (``"ceo@victim.test" <a@b>``), if any."""
    m = _ADDRESS_LIKE_RE.search(box.display)
    return m.group(1).lower().rstrip(".") if m else None
