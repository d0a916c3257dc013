"""The token bucket that paces submission by spec.rate, on a clock the test drives."""

from __future__ import annotations

import asyncio

from smtpinfra_campaign.pacing import TokenBucket


class FakeClock:
    """A test clock: `sleep` advances it instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_is_respected_over_a_minute():
    clock = FakeClock()
    bucket = TokenBucket(120, clock=clock, sleep=clock.sleep)

    async def take(n: int) -> None:
        for _ in range(n):
            await bucket.take()

    asyncio.run(take(241))
    # 120 per minute: 241 tokens (the first is free) need two minutes
    assert abs(clock.now - 1000.0 - 120.0) < 0.01


def test_an_idle_period_does_not_become_a_burst():
    clock = FakeClock()
    bucket = TokenBucket(60, clock=clock, sleep=clock.sleep)
    asyncio.run(bucket.take())
    clock.now += 3600  # an hour paused
    start = clock.now

    async def take(n: int) -> None:
        for _ in range(n):
            await bucket.take()

    asyncio.run(take(11))
    assert clock.now - start >= 9.99  # one token banked, then one per second
