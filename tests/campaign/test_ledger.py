"""The ledger in both real databases: states, attempts, duplicates, durability across connections."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from smtpinfra_campaign.ledger import Claim, SqlLedger, State, open_ledger


def _claim(address: str, row: int) -> Claim:
    return Claim(address, row, f"<{address}.mid@alpha.test>", f"uid/{address}")


def assert_ledger_behaviour(ledger: SqlLedger, reopen) -> None:
    campaign = str(uuid.uuid4())
    entries = ledger.claim(campaign, [_claim("a@x.test", 2), _claim("b@x.test", 3), _claim("a@x.test", 4)])
    assert [(e.recipient, e.row, e.state) for e in entries] == [
        ("a@x.test", 2, State.PENDING), ("b@x.test", 3, State.PENDING), ("a@x.test", 2, State.PENDING)]
    ledger.mark(campaign, "a@x.test", State.SUBMITTING)
    ledger.mark(campaign, "a@x.test", State.SUBMITTING)
    ledger.mark(campaign, "b@x.test", State.SUBMITTING)
    ledger.mark(campaign, "b@x.test", State.SUBMITTED, "250 2.0.0 queued")
    ledger.claim(campaign, [Claim("#7", 7, "", "", "invalid email address 'x'")], State.INVALID)
    # a restart: a new connection sees every committed state, and a second claim changes nothing
    again = reopen()
    entries = again.claim(campaign, [_claim("a@x.test", 2), _claim("b@x.test", 3)])
    assert [(e.state, e.attempts, e.message_id) for e in entries] == [
        (State.SUBMITTING, 2, "<a@x.test.mid@alpha.test>"), (State.SUBMITTED, 1, "<b@x.test.mid@alpha.test>")]
    counts = again.counts(campaign)
    assert counts[State.SUBMITTING] == 1 and counts[State.SUBMITTED] == 1 and counts[State.INVALID] == 1
    assert again.invalid_rows(campaign, 20) == [(7, "invalid email address 'x'")]
    assert again.entry(campaign, "b@x.test").reply == "250 2.0.0 queued"
    assert again.counts(str(uuid.uuid4()))[State.SUBMITTED] == 0  # campaigns are separate
    # erasure is scoped to the tenant's campaigns: another tenant's ledger rows for the address stay
    other = str(uuid.uuid4())
    again.claim(other, [_claim("a@x.test", 2)])
    assert again.erase("a@X.TEST", [campaign, str(uuid.uuid4())]) == 1  # the domain compared normalised
    assert again.entry(campaign, "a@x.test") is None and again.entry(other, "a@x.test") is not None
    assert again.erase("a@x.test", []) == 0 and again.entry(other, "a@x.test") is not None
    again.close()


def test_sqlite_ledger(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/campaign/ledger.db"
    ledger = open_ledger(url)
    assert ledger.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert_ledger_behaviour(ledger, lambda: open_ledger(url))
    ledger.close()


def test_postgres_ledger(postgres_url: str):
    ledger = open_ledger(postgres_url)
    assert_ledger_behaviour(ledger, lambda: open_ledger(postgres_url))
    ledger.close()


def test_bad_ledger_url_is_refused():
    with pytest.raises(ValueError, match="unsupported ledger URL"):
        open_ledger("mysql://x")
