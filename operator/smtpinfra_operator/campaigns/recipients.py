"""The first rows of a campaign's recipient list, parsed as the sender reads them (pure).

The operator renders the templates against a few rows before anything is sent; it never reads the
whole list (the sender streams it). Lists are CSV with an ``email`` column, or JSON lines (one
object per line with an ``email`` key); every other column or key is a template variable.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SAMPLE_ROWS = 5
"""Rows the templates are rendered against before the sender starts."""
MAX_SAMPLE_BYTES = 1 << 20
"""At most this much of a list is parsed for the sample."""


@dataclass(frozen=True)
class Sample:
    """The first valid rows of a list, and the first problems met on the way."""

    rows: list[dict[str, Any]]
    problems: list[str]


def _json_lines(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    number = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        number += 1
        try:
            row = json.loads(line)
        except ValueError as error:
            yield number, f"not JSON: {error}"
            continue
        yield number, row if isinstance(row, dict) else "not a JSON object"


def _csv_rows(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in reader.fieldnames or []]
    if "email" not in fields:
        yield 0, f"the CSV header has no 'email' column (columns: {', '.join(fields) or 'none'})"
        return
    reader.fieldnames = fields
    for number, row in enumerate(reader, start=1):
        if None in row:
            yield number, "more fields than the header names"
            continue
        yield number, {k: v for k, v in row.items() if k}


def sample(text: str, limit: int = SAMPLE_ROWS) -> Sample:
    """Up to `limit` rows with a non-empty ``email`` from a CSV or JSON-lines list."""
    text = text[:MAX_SAMPLE_BYTES]
    head = text.lstrip()
    parsed = _json_lines(text) if head.startswith("{") else _csv_rows(text)
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for number, row in parsed:
        if isinstance(row, str):
            problems.append(f"row {number}: {row}" if number else row)
        elif not str(row.get("email") or "").strip():
            problems.append(f"row {number}: no email")
        else:
            rows.append(row)
        if len(rows) >= limit or number == 0:
            break
    return Sample(rows=rows, problems=problems)


def inline_sample(addresses: list[str], limit: int = SAMPLE_ROWS) -> Sample:
    """Rows of an inline list: the address is the only variable."""
    return Sample(rows=[{"email": a} for a in addresses[:limit]], problems=[])
