"""Recipient lists, parsed as a stream: memory stays flat whatever the length of the list.

CSV (the header row names the variables; one column is `email`) or JSON lines (one object per
line with an `email` key). A malformed row yields an `InvalidRow` (its line number and why) and
the stream goes on: a bad row is never fatal. Only a list that cannot be read at all (no header,
no `email` column, duplicate column names) raises `ListError`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from smtpinfra_api.meta import EMAIL_PATTERN

MAX_ROW_CHARS = 64 * 1024
"""A longer row (or JSON line) is refused: no recipient needs that much personal data."""
MAX_VARIABLES = 100
EMAIL_COLUMN = "email"
_EMAIL = re.compile(EMAIL_PATTERN)
_HEADER_BREAKING = re.compile("[\r\n\x00]")


class ListError(ValueError):
    """The list as a whole cannot be read (its header); the campaign stops with this message."""


@dataclass(frozen=True)
class Recipient:
    row: int
    """Line of the list (the CSV header is line 1), or position in an inline list."""
    email: str
    variables: dict[str, Any] = field(default_factory=dict)
    """Template variables, `email` included."""


@dataclass(frozen=True)
class InvalidRow:
    row: int
    reason: str


Row = Recipient | InvalidRow


def _lines(stream: IO[str]) -> Iterator[str | None]:
    """Physical lines, each read with a bound; an over-long line is consumed and yielded as None."""
    while True:
        line = stream.readline(MAX_ROW_CHARS + 1)
        if not line:
            return
        if len(line) > MAX_ROW_CHARS and not line.endswith("\n"):
            while True:  # skip the rest of the over-long line without holding it
                rest = stream.readline(MAX_ROW_CHARS)
                if not rest or rest.endswith("\n"):
                    break
            yield None
            continue
        yield line


def check_recipient(row: int, email: Any, variables: dict[str, Any], header_variables: frozenset[str]) -> Row:
    """The recipient, or why the row is refused (address syntax, CR/LF in a value the Subject uses)."""
    if not isinstance(email, str) or not email.strip():
        return InvalidRow(row, "missing email")
    email = email.strip()
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        return InvalidRow(row, f"invalid email address {email[:80]!r}")
    for name in header_variables:
        value = variables.get(name)
        if isinstance(value, str) and _HEADER_BREAKING.search(value):
            return InvalidRow(row, f"column {name!r} holds a line break and is used in the subject header")
    variables[EMAIL_COLUMN] = email
    return Recipient(row, email, variables)


def parse_csv(stream: IO[str], header_variables: frozenset[str] = frozenset()) -> Iterator[Row]:
    """Rows of a CSV list; records may span lines inside quotes (RFC 4180), each bounded in size."""
    lines = _lines(stream)
    header: list[str] | None = None
    lineno = 0
    for first in lines:
        lineno += 1
        start = lineno
        if first is None:
            if header is None:
                raise ListError(f"line {start}: the header row is longer than {MAX_ROW_CHARS} characters")
            yield InvalidRow(start, f"row longer than {MAX_ROW_CHARS} characters")
            continue
        record, oversized = first, False
        while record.count('"') % 2 == 1:  # an open quoted field continues on the next line
            more = next(lines, "")
            lineno += 1
            if more is None or len(record) + len(more) > MAX_ROW_CHARS:
                oversized = True
                break
            if more == "":
                break
            record += more
        if oversized:
            # skip to the end of the quoted field so the next row starts cleanly
            for more in lines:
                lineno += 1
                if more is not None and more.count('"') % 2 == 1:
                    break
            yield InvalidRow(start, f"row longer than {MAX_ROW_CHARS} characters")
            continue
        if not record.strip():
            continue
        try:
            fields = next(csv.reader([record.rstrip("\r\n")], strict=True))
        except (csv.Error, StopIteration) as exc:
            if header is None:
                raise ListError(f"line {start}: unreadable header row: {exc}") from None
            yield InvalidRow(start, f"malformed CSV: {exc}")
            continue
        if header is None:
            header = [h.strip() for h in fields]
            if EMAIL_COLUMN not in header:
                raise ListError(f"line {start}: the header row has no {EMAIL_COLUMN!r} column: {header[:10]}")
            duplicates = sorted({h for h in header if header.count(h) > 1})
            if duplicates or "" in header:
                raise ListError(f"line {start}: duplicate or empty column names in the header: {duplicates}")
            if len(header) > MAX_VARIABLES:
                raise ListError(f"line {start}: more than {MAX_VARIABLES} columns")
            continue
        if len(fields) != len(header):
            yield InvalidRow(start, f"expected {len(header)} columns, found {len(fields)}")
            continue
        variables = dict(zip(header, fields, strict=True))
        yield check_recipient(start, variables[EMAIL_COLUMN], variables, header_variables)
    if header is None:
        raise ListError("the list is empty: no header row")


_SCALARS = (str, int, float, bool, type(None))


def parse_jsonl(stream: IO[str], header_variables: frozenset[str] = frozenset()) -> Iterator[Row]:
    """Rows of a JSON-lines list: one object per line, scalar values only."""
    for lineno, line in enumerate(_lines(stream), start=1):
        if line is None:
            yield InvalidRow(lineno, f"row longer than {MAX_ROW_CHARS} characters")
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            yield InvalidRow(lineno, f"invalid JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            yield InvalidRow(lineno, "not a JSON object")
            continue
        if len(obj) > MAX_VARIABLES:
            yield InvalidRow(lineno, f"more than {MAX_VARIABLES} keys")
            continue
        bad = [k for k, v in obj.items() if not isinstance(v, _SCALARS)]
        if bad:
            yield InvalidRow(lineno, f"key {bad[0]!r} is not a string, number, boolean or null")
            continue
        yield check_recipient(lineno, obj.get(EMAIL_COLUMN), obj, header_variables)


def parse_inline(addresses: Iterable[str], header_variables: frozenset[str] = frozenset()) -> Iterator[Row]:
    for n, address in enumerate(addresses, start=1):
        yield check_recipient(n, address, {}, header_variables)


PARSERS: dict[str, Callable[[IO[str], frozenset[str]], Iterator[Row]]] = {"csv": parse_csv, "jsonl": parse_jsonl}
