"""The report worker pool: answers, time limits, dead workers replaced (real spawned processes)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from smtpinfra_mta.reportworker import ParseFailed, ReportWorkers

from .hostile import quadratic_content_type
from .test_feedback import dsn

pytestmark = pytest.mark.mta

GOOD = dsn("bounces+x-y@bounces.mta.test", "a@example.test", "5.1.1", "550 5.1.1 unknown").encode()


def test_a_worker_that_overruns_or_dies_is_replaced_and_the_pool_keeps_answering() -> None:
    async def scenario() -> None:
        pool = ReportWorkers(size=1, timeout=1.0, max_bytes=256 * 1024)
        await pool.start()
        try:
            assert (await pool.parse(GOOD)).recipients == ["a@example.test"]
            with pytest.raises(ParseFailed) as slow:
                await pool.parse(quadratic_content_type(200 * 1024))
            assert slow.value.reason == "timeout"
            assert (await pool.parse(GOOD)).kind == "bounce"  # a fresh worker took over
            victim = next(iter(pool._all)).process.pid
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            with pytest.raises(ParseFailed) as dead:
                await pool.parse(GOOD)
            assert dead.value.reason == "worker"
            assert (await pool.parse(GOOD)).kind == "bounce"
            assert pool.replaced == 2
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_malformed_input_is_a_parse_failure_not_an_exception_of_the_caller() -> None:
    async def scenario() -> None:
        pool = ReportWorkers(size=1, timeout=10.0)
        await pool.start()
        try:
            quoted = b"Return-Path: <a@b.test>\r\n\r\nbody"
            for _ in range(3000):  # each level one more parser recursion
                quoted = b"Content-Type: message/rfc822\r\n\r\n" + quoted
            with pytest.raises(ParseFailed) as err:
                await pool.parse(b'MIME-Version: 1.0\r\nContent-Type: multipart/report; boundary="B"\r\n\r\n'
                                 b"--B\r\nContent-Type: message/rfc822\r\n\r\n" + quoted + b"\r\n--B--\r\n")
            assert err.value.reason == "malformed"
            assert pool.replaced == 0  # the worker answered: kept
        finally:
            await pool.close()

    asyncio.run(scenario())
