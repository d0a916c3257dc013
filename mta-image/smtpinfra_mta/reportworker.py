"""Inbound reports parsed in worker processes with a time limit, never on the delivery event loop.

The email package's header parsing is quadratic on some crafted input (an unterminated quote in a
``Content-Type`` parameter followed by folded ``;``), and a thread cannot be interrupted: a report that
takes too long would hold its thread, and on the event loop it would stall all outbound delivery. So a
small pool of processes is fed the (already size-bounded) bytes; a worker that does not answer in time
is killed and replaced, and the report counts as failed. Workers are started with ``spawn`` (the MTA
runs threads, which ``fork`` must not copy) and say when they are ready, so the time limit measures
parsing, not interpreter start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Literal

from smtpinfra_mta.reports import Report, ReportError, parse_report

log = logging.getLogger(__name__)

_READY = b"ready"
_START_TIMEOUT = 120.0  # a loaded machine can take long to start an interpreter; this is not the parse limit


class ParseFailed(Exception):
    """A report could not be parsed; ``reason`` is a short metric label."""

    def __init__(self, reason: Literal["timeout", "malformed", "worker"], detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _serve(conn: Connection, max_bytes: int) -> None:
    """Worker main loop: bytes in, ("ok", Report) or ("error", text) out, until the pipe closes."""
    conn.send_bytes(_READY)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", parse_report(data, max_bytes)))
        except ReportError as exc:
            conn.send(("error", str(exc)))
        except Exception as exc:  # MemoryError and the like: report it, keep serving
            conn.send(("error", f"{type(exc).__name__}: {str(exc)[:200]}"))


@dataclass(eq=False)  # identity: workers live in a set
class _Worker:
    process: BaseProcess
    conn: Connection

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)


class ReportWorkers:
    """A pool of ``size`` worker processes; ``parse`` waits for a free one, then for its answer."""

    def __init__(self, size: int = 1, timeout: float = 5.0, max_bytes: int = 128 * 1024) -> None:
        self.size = size
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.replaced = 0  # workers killed and replaced (timeouts, crashes)
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()
        self._closed = False

    async def start(self) -> None:
        self._idle = asyncio.Queue()
        workers = await asyncio.gather(*(asyncio.to_thread(self._spawn) for _ in range(self.size)))
        for w in workers:
            self._idle.put_nowait(w)

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_serve, args=(child, self.max_bytes), name="report-worker", daemon=True)
        proc.start()
        child.close()
        worker = _Worker(proc, parent)
        if not parent.poll(_START_TIMEOUT) or parent.recv_bytes() != _READY:
            worker.kill()
            raise RuntimeError("report worker did not start")
        self._all.add(worker)
        return worker

    def _roundtrip(self, worker: _Worker, data: bytes) -> tuple[str, object] | None:
        """The worker's answer, or None when it did not answer within the time limit."""
        worker.conn.send_bytes(data)
        if not worker.conn.poll(self.timeout):
            return None
        answer: tuple[str, object] = worker.conn.recv()
        return answer

    async def parse(self, content: bytes) -> Report:
        """The parsed report; raises :class:`ParseFailed` on malformed input, timeout or a dead worker."""
        assert self._idle is not None, "start() first"
        worker = await self._idle.get()
        healthy = False
        try:
            try:
                answer = await asyncio.to_thread(self._roundtrip, worker, content[:self.max_bytes])
            except (EOFError, OSError) as exc:
                raise ParseFailed("worker", f"report worker died: {exc}") from exc
            if answer is None:
                raise ParseFailed("timeout", f"not parsed within {self.timeout:g}s")
            healthy = True
            status, value = answer
            if status == "ok" and isinstance(value, Report):
                return value
            raise ParseFailed("malformed", str(value))
        finally:
            if healthy:
                self._idle.put_nowait(worker)
            else:
                await self._replace(worker)

    async def _replace(self, worker: _Worker) -> None:
        assert self._idle is not None
        self._all.discard(worker)
        await asyncio.to_thread(worker.kill)
        self.replaced += 1
        if self._closed:
            return
        while True:
            try:
                self._idle.put_nowait(await asyncio.to_thread(self._spawn))
                return
            except (OSError, RuntimeError) as exc:
                log.error("report worker could not be replaced; retrying", extra={"error": str(exc)})
                await asyncio.sleep(5.0)

    async def close(self) -> None:
        self._closed = True
        workers, self._all = list(self._all), set()
        await asyncio.gather(*(asyncio.to_thread(w.kill) for w in workers))
