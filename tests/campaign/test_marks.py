"""The sender's ledger changes, committed in batches behind the sending (`smtpinfra_campaign.marks`)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from smtpinfra_campaign.ledger import Claim, State, open_ledger
from smtpinfra_campaign.marks import LedgerMarks


def _ledger(tmp_path: Path) -> Any:
    ledger = open_ledger(f"sqlite:///{tmp_path}/ledger.db")
    return ledger


def test_changes_are_committed_in_order_within_the_interval_and_on_close(tmp_path: Path) -> None:
    ledger, campaign = _ledger(tmp_path), str(uuid.uuid4())
    ledger.claim(campaign, [Claim("a@x.test", 2, "<a>", "k/a"), Claim("b@x.test", 3, "<b>", "k/b")])
    reader = open_ledger(f"sqlite:///{tmp_path}/ledger.db")  # another connection: what a restart would see

    async def run() -> None:
        marks = LedgerMarks(ledger, campaign, interval=0.05)
        marks.add("a@x.test", State.SUBMITTING)
        marks.add("a@x.test", State.SUBMITTED, "250 ok")
        for _ in range(100):  # the background writer commits without anyone asking
            await asyncio.sleep(0.02)
            if reader.entry(campaign, "a@x.test").state is State.SUBMITTED:
                break
        assert (reader.entry(campaign, "a@x.test").state, reader.entry(campaign, "a@x.test").attempts) == \
            (State.SUBMITTED, 1)
        marks.add("b@x.test", State.SUBMITTING)
        await marks.close()
        assert reader.entry(campaign, "b@x.test").state is State.SUBMITTING

    asyncio.run(run())


def test_a_failed_commit_keeps_the_changes_for_the_next_one(tmp_path: Path) -> None:
    ledger, campaign = _ledger(tmp_path), str(uuid.uuid4())
    ledger.claim(campaign, [Claim("a@x.test", 2, "<a>", "k/a")])

    class Flaky:
        failures = 1

        def mark_many(self, c: str, changes: Any) -> None:
            if self.failures:
                self.failures -= 1
                raise OSError("database is locked")
            ledger.mark_many(c, changes)

    async def run() -> None:
        marks = LedgerMarks(Flaky(), campaign, interval=10)  # type: ignore[arg-type]
        marks.add("a@x.test", State.SUBMITTING)
        with pytest.raises(OSError):
            await marks.flush()
        marks.add("a@x.test", State.SUBMITTED, "250 ok")
        await marks.close()

    asyncio.run(run())
    entry = ledger.entry(campaign, "a@x.test")
    assert (entry.state, entry.attempts, entry.reply) == (State.SUBMITTED, 1, "250 ok")
