"""Recipient lists: streamed, every malformed row reported with its line and skipped."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from smtpinfra_campaign.recipients import (
    MAX_ROW_CHARS,
    InvalidRow,
    ListError,
    Recipient,
    parse_csv,
    parse_inline,
    parse_jsonl,
)


def csv_rows(text: str, header_variables: frozenset[str] = frozenset()) -> list[Recipient | InvalidRow]:
    return list(parse_csv(io.StringIO(text, newline=""), header_variables))


def test_csv_header_names_the_variables():
    rows = csv_rows("email,first_name\r\na@example.test,Ann\r\nb@example.test,\"Bob, Jr.\"\r\n")
    assert rows == [
        Recipient(2, "a@example.test", {"email": "a@example.test", "first_name": "Ann"}),
        Recipient(3, "b@example.test", {"email": "b@example.test", "first_name": "Bob, Jr."}),
    ]


def test_csv_malformed_rows_are_reported_and_skipped():
    text = (
        "email,first_name\n"
        "a@example.test,Ann\n"
        "not-an-address,Bob\n"          # 3: bad address
        "c@example.test\n"              # 4: wrong column count
        "d@example.test,Dan,extra\n"    # 5: wrong column count
        "e@example.test,\"Eve\"x\n"     # 6: malformed quoting
        f"f@example.test,{'y' * (MAX_ROW_CHARS + 10)}\n"  # 7: oversized
        "g@example.test,\"Gil\r\nBcc: x@example.net\"\n"  # 8-9: CR/LF in a value the subject uses
        "h@example.test,Hal\n"          # 10
    )
    rows = csv_rows(text, frozenset({"first_name"}))
    good = [r.email for r in rows if isinstance(r, Recipient)]
    bad = {r.row: r.reason for r in rows if isinstance(r, InvalidRow)}
    assert good == ["a@example.test", "h@example.test"]
    assert set(bad) == {3, 4, 5, 6, 7, 8}
    assert "invalid email address" in bad[3]
    assert bad[4] == "expected 2 columns, found 1"
    assert bad[5] == "expected 2 columns, found 3"
    assert "malformed CSV" in bad[6]
    assert "longer than" in bad[7]
    assert "line break" in bad[8] and "first_name" in bad[8]


def test_csv_multiline_value_is_fine_when_not_bound_for_a_header():
    rows = csv_rows("email,note\na@example.test,\"two\nlines\"\nb@example.test,x\n")
    assert [r.row for r in rows] == [2, 4]
    assert rows[0].variables["note"] == "two\nlines"


@pytest.mark.parametrize(("text", "expected"), [
    ("", "empty"),
    ("name,first\na,b\n", "no 'email' column"),
    ("email,x,x\n", "duplicate"),
])
def test_csv_unreadable_header_stops_the_list(text, expected):
    with pytest.raises(ListError, match=expected):
        csv_rows(text)


def test_jsonl_rows():
    text = ('{"email": "a@example.test", "first_name": "Ann", "vip": true}\n'
            '{"email": "b@example.test"\n'
            '[1, 2]\n'
            '{"email": "c@example.test", "nested": {"x": 1}}\n'
            '{"first_name": "nobody"}\n'
            '\n'
            '{"email": "d@example.test"}\n')
    rows = list(parse_jsonl(io.StringIO(text)))
    assert [r.email for r in rows if isinstance(r, Recipient)] == ["a@example.test", "d@example.test"]
    bad = {r.row: r.reason for r in rows if isinstance(r, InvalidRow)}
    assert set(bad) == {2, 3, 4, 5}
    assert bad[2].startswith("invalid JSON")
    assert bad[3] == "not a JSON object"
    assert "nested" in bad[4]
    assert bad[5] == "missing email"


def test_inline_rows():
    rows = list(parse_inline(["a@example.test", "bad"]))
    assert rows == [Recipient(1, "a@example.test", {"email": "a@example.test"}), InvalidRow(2, "invalid email "
                                                                                             "address 'bad'")]


_COUNT_ROWS = """
import resource, sys
from smtpinfra_campaign.recipients import Recipient, parse_csv
with open(sys.argv[1], encoding="utf-8", newline="") as f:
    n = sum(1 for row in parse_csv(f) if isinstance(row, Recipient))
print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _count_rows(path: Path) -> tuple[int, int]:
    """(recipients, peak RSS in KiB) of a fresh interpreter streaming the list."""
    out = subprocess.run([sys.executable, "-c", _COUNT_ROWS, str(path)], capture_output=True, text=True,
                         check=True, timeout=900).stdout.split()
    return int(out[0]), int(out[1])


def _write_list(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write("email,first_name,code\n")
        f.writelines(f"user{i}@example.test,User {i},{i:08d}\n" for i in range(rows))


def test_a_million_rows_stream_in_flat_memory(tmp_path: Path):
    small, large = tmp_path / "small.csv", tmp_path / "large.csv"
    _write_list(small, 1_000)
    _write_list(large, 1_000_000)
    n_small, rss_small = _count_rows(small)
    n_large, rss_large = _count_rows(large)
    assert (n_small, n_large) == (1_000, 1_000_000)
    assert large.stat().st_size > 40_000_000
    # the 1,000,000-row list (over 40 MB) costs the parser no more memory than 1,000 rows, within 10 MiB
    assert rss_large - rss_small < 10 * 1024, (rss_small, rss_large)
