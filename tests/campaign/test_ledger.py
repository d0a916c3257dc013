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
    ledger.mark_many(campaign, [("b@x.test", State.SUBMITTING, None),  # in order, in one transaction
                                ("b@x.test", State.SUBMITTED, "250 2.0.0 queued")])
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


def test_erase_ledger_command_leaves_no_byte_of_the_address_in_the_sqlite_files(tmp_path: Path):
    """`smtp-infra campaign erase-ledger` (the ledger-erasure Job's command): the rows go, and the address's
    bytes are in neither the database file nor its WAL afterwards, while the sender keeps its connection."""
    from typer.testing import CliRunner

    from smtpinfra_campaign.cli import app

    url = f"sqlite:///{tmp_path}/campaign/ledger.db"
    campaign = str(uuid.uuid4())
    sender = open_ledger(url)  # a running sender's connection stays open meanwhile
    sender.claim(campaign, [_claim(f"r{i:04d}@x.test", i) for i in range(200)] + [_claim("erase.me@x.test", 999)])
    sender.mark(campaign, "erase.me@x.test", State.SUBMITTED, "250 2.0.0 queued as erase.me@x.test")
    files = [tmp_path / "campaign" / "ledger.db", tmp_path / "campaign" / "ledger.db-wal"]
    assert any(b"erase.me@x.test" in f.read_bytes() for f in files if f.exists())
    (tmp_path / "addresses").write_text("erase.me@X.TEST\nnobody@x.test\n")  # the domain compared normalised
    result = CliRunner().invoke(app, ["erase-ledger", "--campaign", campaign, "--ledger", url,
                                      "--addresses-file", str(tmp_path / "addresses")])
    assert result.exit_code == 0, result.output
    assert f"erased 1 ledger rows of 2 addresses from campaign {campaign}" in result.output
    assert sender.entry(campaign, "erase.me@x.test") is None and sender.entry(campaign, "r0001@x.test") is not None
    assert [f.name for f in files if f.exists() and b"erase.me@x.test" in f.read_bytes().lower()] == []
    sender.close()
    missing = CliRunner().invoke(app, ["erase-ledger", "--campaign", campaign, "--ledger", url,
                                       "--addresses-file", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "cannot read" in missing.output


def test_sqlite_ledger_keys_rows_by_digest_and_an_older_ledger_keeps_its_plain_keys(tmp_path: Path):
    import sqlite3

    fresh = open_ledger(f"sqlite:///{tmp_path}/new.db")
    campaign = str(uuid.uuid4())
    entries = fresh.claim(campaign, [Claim("ann@x.test", 2, "<m1@x>", f"{campaign}/d1")])
    assert entries[0].recipient == "ann@x.test" and fresh.entry(campaign, "ann@x.test") is not None
    fresh.close()
    assert [f.name for f in tmp_path.glob("new.db*") if b"ann@x.test" in f.read_bytes()] == []

    # a ledger from before hashed keys: rows and no mark; resumed, it finds its rows (nobody sent twice)
    old = sqlite3.connect(tmp_path / "old.db")
    old.execute("CREATE TABLE campaign_ledger (campaign TEXT NOT NULL, recipient TEXT NOT NULL, row_number BIGINT"
                " NOT NULL, state TEXT NOT NULL, message_id TEXT NOT NULL, idempotency_key TEXT NOT NULL, attempts"
                " INTEGER NOT NULL DEFAULT 0, reply TEXT, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE"
                " PRECISION NOT NULL, PRIMARY KEY (campaign, recipient))")
    old.execute("INSERT INTO campaign_ledger VALUES (?, 'bob@x.test', 2, 'submitted', '<m>', 'k', 1, '250', 0, 0)",
                (campaign,))
    old.commit()
    old.close()
    resumed = open_ledger(f"sqlite:///{tmp_path}/old.db")
    again = resumed.claim(campaign, [Claim("bob@x.test", 2, "<m>", "k"), Claim("cy@x.test", 3, "<n>", "l")])
    assert [(e.recipient, e.state) for e in again] == [("bob@x.test", State.SUBMITTED), ("cy@x.test", State.PENDING)]
    assert resumed.erase("bob@x.test", [campaign]) == 1
    resumed.close()
