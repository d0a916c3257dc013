"""The Kicker: coalesced reconciles, and background (resync) kicks that yield to event-driven ones."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from smtpinfra_operator.kicker import Kicker


class Recorder:
    """Reconciles that take a little while and record the order in which they finish."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds = seconds
        self.order: list[str] = []
        self.running = self.peak_background = 0
        self.changed = asyncio.Condition()

    async def reconcile(self, key: str) -> None:
        self.running += 1
        if key.startswith("bg"):
            self.peak_background = max(self.peak_background, self.running)
        await asyncio.sleep(self.seconds)
        self.running -= 1
        async with self.changed:
            self.order.append(key)
            self.changed.notify_all()

    async def until(self, done: Callable[[list[str]], bool]) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: done(self.order))


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=20))


def test_kicks_of_one_key_coalesce_into_one_reconcile() -> None:
    async def scenario() -> None:
        rec = Recorder()
        kicker: Kicker[str] = Kicker(rec.reconcile, delay=0.05)
        for _ in range(5):
            kicker.kick("a")
        kicker.kick("a", background=True)
        kicker.kick("b")
        await rec.until(lambda order: "b" in order and "a" in order)
        await asyncio.sleep(0.2)  # nothing else may follow
        assert sorted(rec.order) == ["a", "b"]

    run(scenario)


def test_background_kicks_yield_to_due_kicks_and_run_a_few_at_a_time() -> None:
    async def scenario() -> None:
        rec = Recorder()
        kicker: Kicker[str] = Kicker(rec.reconcile, delay=0.0, concurrency=16)
        for i in range(10):
            kicker.kick(f"bg{i}", background=True)
        kicker.kick("urgent")
        await rec.until(lambda order: len(order) == 11)
        assert rec.order.index("urgent") <= Kicker.BACKGROUND_CONCURRENCY, rec.order
        assert rec.peak_background <= Kicker.BACKGROUND_CONCURRENCY + 1  # + the urgent one

    run(scenario)


def test_an_event_kick_during_a_long_resync_is_not_queued_behind_it() -> None:
    async def scenario() -> None:
        rec = Recorder(seconds=0.02)
        kicker: Kicker[str] = Kicker(rec.reconcile, delay=0.0, concurrency=8)
        for i in range(40):
            kicker.kick(f"bg{i}", background=True)
        await rec.until(lambda order: len(order) >= 4)
        finished_before = len(rec.order)
        kicker.kick("new-server")
        await rec.until(lambda order: len(order) == 41)
        assert rec.order.index("new-server") <= finished_before + Kicker.BACKGROUND_CONCURRENCY, rec.order

    run(scenario)


def test_an_urgent_kick_of_a_key_waiting_in_the_background_moves_it_forward() -> None:
    async def scenario() -> None:
        rec = Recorder()
        kicker: Kicker[str] = Kicker(rec.reconcile, delay=0.0, concurrency=1)
        for key in ("a", "b", "c"):
            kicker.kick(key, background=True)
        kicker.kick("c")
        await rec.until(lambda order: len(order) == 3)
        await asyncio.sleep(0.1)
        assert rec.order[0] == "c" and sorted(rec.order) == ["a", "b", "c"], rec.order

    run(scenario)


def test_a_sooner_kick_of_a_waiting_key_wakes_the_idle_worker() -> None:
    """A key waiting 30 s (a server's deferred first status) kicked again with no delay (its pod is Ready)
    runs now, not when the worker waiting for it would have woken; so does a new key once the worker
    is idle again."""
    async def scenario() -> None:
        rec = Recorder()
        kicker: Kicker[str] = Kicker(rec.reconcile, delay=0.0, concurrency=1)
        kicker.kick("a", delay=30.0)
        await asyncio.sleep(0.05)  # the one worker now sleeps until a is due
        kicker.kick("a", delay=0.0)
        await asyncio.wait_for(rec.until(lambda order: order == ["a"]), timeout=5)
        kicker.kick("b", delay=30.0)
        await asyncio.sleep(0.05)
        kicker.kick("c", background=True)
        await asyncio.wait_for(rec.until(lambda order: order == ["a", "c"]), timeout=5)
        assert kicker.pending() == 1  # b still waits for its time

    run(scenario)


async def eventually(check: Callable[[], bool]) -> None:
    """Poll a condition of the queue (the scenario's timeout bounds the wait)."""
    for _ in range(2000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def test_a_paused_replica_parks_keys_and_runs_them_once_it_is_active() -> None:
    """The queue asks the peering before each key: nothing runs while paused, nothing is lost."""
    paused = True

    async def scenario() -> None:
        nonlocal paused
        recorder = Recorder(seconds=0.0)
        kicker: Kicker[str] = Kicker(recorder.reconcile, delay=0.0, paused=lambda: paused)
        kicker.PARKED_POLL = 0.05
        for key in ("a", "b", "a"):
            kicker.kick(key)
        await eventually(lambda: kicker.parked() == 2)  # both came due and were parked, not run
        assert recorder.order == []
        assert kicker.pending() == 2
        paused = False
        await recorder.until(lambda order: sorted(order) == ["a", "b"])
        assert kicker.parked() == 0

    run(scenario)


def test_a_reconcile_refused_mid_way_by_the_write_guard_is_parked_not_retried_as_a_failure() -> None:
    from smtpinfra_kube import Paused

    paused = False
    calls: list[str] = []

    async def scenario() -> None:
        nonlocal paused

        async def reconcile(key: str) -> None:
            nonlocal paused
            calls.append(key)
            if len(calls) == 1:
                paused = True  # another replica took over while this one was writing
                raise Paused("PATCH", "/api/v1/namespaces/x/services/y")

        kicker: Kicker[str] = Kicker(reconcile, delay=0.0, paused=lambda: paused)
        kicker.PARKED_POLL = 0.05
        kicker.kick("a")
        await eventually(lambda: kicker.parked() == 1)
        assert calls == ["a"]
        paused = False
        await eventually(lambda: len(calls) == 2)
        assert calls == ["a", "a"]

    run(scenario)


def test_a_kick_between_a_workers_last_return_and_its_removal_still_gets_a_worker() -> None:
    """A worker that found nothing left to do has finished, but the queue forgets it only in a done-callback a
    turn later; a kick in between must not count it as a live worker (the key then waited for the next kick:
    a Tenant created while the operator was down was never reconciled after its start)."""
    done: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate: asyncio.Future[None] = loop.create_future()

        async def reconcile(key: str) -> None:
            if key == "A":
                await gate
            done.append(key)

        kicker = Kicker(reconcile, delay=0.0, concurrency=1)
        kicker.kick("A")
        await asyncio.sleep(0.01)  # the worker waits in A's reconcile

        def release() -> None:
            gate.set_result(None)  # the worker resumes first, finishes A and returns (nothing else is due) ...
            loop.call_soon(kicker.kick, "B", 0.0)  # ... then B is kicked before the worker's done-callback runs

        loop.call_soon(release)
        await asyncio.sleep(0.2)

    asyncio.run(main())
    assert done == ["A", "B"]
