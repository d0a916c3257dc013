"""The idempotency index and the pieces of several receiving processes that need no process to test."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpinfra_mta.config import ListenerLimits
from smtpinfra_mta.idempotency import CommitFailed, IdempotencyIndex
from smtpinfra_mta.limits import ConnectionBudget
from smtpinfra_mta.metrics import Metrics
from smtpinfra_mta.spool import accept_shards, shard_name


def test_log_lines_load_except_torn_expired_and_malformed_ones() -> None:
    now = 1_000_000.0
    lines = [json.dumps(["t", "k1", "id1", now - 10]), json.dumps(["t", "k2", "id2", now - 100_000]),
             "not json", json.dumps([1, "k3", "id3", now]), json.dumps(["t", "k4", "id4", now])[:-3]]
    index = IdempotencyIndex(retention=86400)
    assert index.load("\n".join(lines).encode(), now=now) == 1
    assert [key for key, _ in index.items()] == [("t", "k1")]


def test_a_second_claim_waits_for_the_first_and_gets_its_id() -> None:
    async def run() -> tuple[str | None, str | None, str | None]:
        index = IdempotencyIndex(retention=60)
        first = await index.claim(("t", "k"))
        second = asyncio.ensure_future(index.claim(("t", "k")))
        await asyncio.sleep(0)
        assert not second.done()
        index.settle(("t", "k"), "q1", time.time())
        return first, await second, await index.claim(("t", "k"))
    assert asyncio.run(run()) == (None, "q1", "q1")


def test_a_failed_first_attempt_fails_the_waiter_and_frees_the_key() -> None:
    async def run() -> str | None:
        index = IdempotencyIndex(retention=60)
        assert await index.claim(("t", "k")) is None
        waiter = asyncio.ensure_future(index.claim(("t", "k")))
        await asyncio.sleep(0)
        index.settle(("t", "k"), None, 0.0)
        with pytest.raises(CommitFailed):
            await waiter
        return await index.claim(("t", "k"))  # free again: this caller commits it
    assert asyncio.run(run()) is None


def test_connection_totals_are_split_and_per_address_limits_are_not() -> None:
    limits = ListenerLimits(max_connections=10, max_connections_per_ip=3)
    budget = ConnectionBudget(processes=3)  # ceil(10 / 3) = 4 connections in this process
    admitted = [budget.open("submission", f"10.0.0.{i}", limits) for i in range(5)]
    assert admitted[:4] == [None] * 4 and admitted[4] is not None and "4.3.2" in admitted[4]
    one = ConnectionBudget(processes=3)
    per_ip = [one.open("submission", "10.0.0.1", limits) for _ in range(4)]
    assert per_ip[:3] == [None] * 3 and per_ip[3] is not None and "4.7.0" in per_ip[3]


def test_metrics_of_several_processes_are_summed_by_labels() -> None:
    first, other = Metrics(), Metrics()
    first.accepted.labels(tenant="a", pool="p", listener="submission").inc(2)
    other.accepted.labels(tenant="a", pool="p", listener="submission").inc(3)
    other.accepted.labels(tenant="b", pool="p", listener="submission").inc(1)
    other.sessions.set(4)
    first.others[1] = json.loads(json.dumps(other.snapshot()))  # as it travels between the processes
    text = first.render().decode()
    assert 'smtpinfra_mta_accepted_total{listener="submission",pool="p",tenant="a"} 5.0' in text
    assert 'smtpinfra_mta_accepted_total{listener="submission",pool="p",tenant="b"} 1.0' in text
    assert "smtpinfra_mta_sessions 4.0" in text
    assert text.count("# TYPE smtpinfra_mta_accepted_total counter") == 1


def test_shards_of_the_configured_processes_and_of_a_larger_number_before(tmp_path: Path) -> None:
    assert [shard_name(i) for i in range(3)] == ["accept", "accept-1", "accept-2"]
    for name in ("accept-1", "accept-11", "accept-x", "other"):
        (tmp_path / name).mkdir()
    assert accept_shards(tmp_path, 2) == ["accept", "accept-1", "accept-11"]
    assert accept_shards(tmp_path / "missing", 1) == ["accept"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["k1", "k2"]), st.booleans(), st.integers(0, 3)), min_size=1, max_size=30))
def test_any_interleaving_commits_a_key_at_most_once_and_every_waiter_learns_its_id(
        attempts: list[tuple[str, bool, int]]) -> None:
    """Attempts (key, whether its commit succeeds, how many loop turns it takes) from several sessions at once.

    However they interleave: of the attempts that commit, at most one per key does (the others are
    duplicates of it); a duplicate answers with the id of the one that committed; an attempt waiting on
    one that fails gets CommitFailed and no id.
    """
    async def run() -> tuple[dict[str, list[str]], list[tuple[str, str | None, str]]]:
        index = IdempotencyIndex(retention=60)
        committed: dict[str, list[str]] = {}
        answers: list[tuple[str, str | None, str]] = []

        async def attempt(n: int, key: str, succeeds: bool, turns: int) -> None:
            try:
                existing = await index.claim(("t", key))
            except CommitFailed:
                answers.append((key, None, "failed"))
                return
            if existing is not None:
                answers.append((key, existing, "duplicate"))
                return
            for _ in range(turns):
                await asyncio.sleep(0)
            msg_id = f"{key}-{n}" if succeeds else None
            if msg_id is not None:
                committed.setdefault(key, []).append(msg_id)
            index.settle(("t", key), msg_id, time.time())
            answers.append((key, msg_id, "committed" if succeeds else "lost"))

        await asyncio.gather(*(attempt(n, *a) for n, a in enumerate(attempts)))
        return committed, answers

    committed, answers = asyncio.run(run())
    assert all(len(ids) == 1 for ids in committed.values()), committed
    for key, msg_id, how in answers:
        if how == "duplicate":
            assert committed.get(key) == [msg_id]
