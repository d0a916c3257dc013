"""Several receiving processes per replica (``listeners.processes``): one set of listening sockets, N SMTP processes.

Why: one asyncio process is one core. A pod that requests more CPU gets more receiving processes (the
operator renders ``listeners.processes`` from the CPU request) and still one delivery process. The first
receiving process (the one ``serve`` runs) binds the listeners and starts the others with the listening
sockets inherited: a pre-fork acceptor, where a process accepts when it has time, so a busy one takes fewer
connections, and no port is bound twice.

What they share, and how:

* the spool volume: each process commits to its own shard (``accept``, ``accept-1``, …), which the one
  delivery process scans when it starts; each committed envelope reaches it through the first process;
* one idempotency index, held by the first process: the others claim a key before they commit and
  settle it with the committed envelope, in one line, so a key is accepted once per replica;
* the quota counters: the spool's SQLite file, where a reservation is one ``BEGIN IMMEDIATE``
  transaction whoever makes it, read without a cache;
* metrics: every METRICS_INTERVAL the others send their samples; the first serves the sums on /metrics.

The first process restarts one that dies. Before that it settles the keys the dead one had claimed from
that shard's ``idempotency.log`` (written with the messages, so it says which commits happened) and hands
the delivery process every message of the shard it was not told about. A receiving process whose first
process is gone drains and exits.

Lines on the socket pair between the first process and another (tab after a one-letter tag):
``q`` claim ``[n, tenant, key]`` → reply ``[n, id or null, error or null]``; ``c`` committed envelope;
``s`` a claimed commit failed ``[tenant, key]``; ``m`` metrics snapshot; ``r`` ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtpinfra_mta.app import MtaApp
from smtpinfra_mta.config import load_config
from smtpinfra_mta.idempotency import CommitFailed, IdemKey, IdempotencyIndex
from smtpinfra_mta.metrics import Metrics
from smtpinfra_mta.protocol import ListenerKind
from smtpinfra_mta.spool import MAGIC, SpooledMessage, shard_name

log = logging.getLogger(__name__)

METRICS_INTERVAL = 2.0
PRUNE_INTERVAL = 30.0
"""How often the first process forgets forwarded ids whose files the delivery process has removed."""
RESTART_DELAY_MAX = 30.0
LINE_LIMIT = 32 << 20
"""Longest line either side accepts: an envelope holds every recipient (limits.max_recipients up to
100,000 addresses of up to 256 bytes), a metrics snapshot every labelled series."""


def queued_envelopes(shard_dir: Path) -> dict[str, SpooledMessage]:
    """The committed messages of a shard by id, read from their envelope lines (torn files left out)."""
    out: dict[str, SpooledMessage] = {}
    with contextlib.suppress(FileNotFoundError):
        for path in (shard_dir / "queue").glob("*.msg"):
            try:
                with path.open("rb") as f:
                    if f.readline() != MAGIC:
                        continue
                    line = f.readline(LINE_LIMIT)
                    size = os.fstat(f.fileno()).st_size
                msg = SpooledMessage.from_json(line)
            except (OSError, ValueError, KeyError):
                continue
            if size == len(MAGIC) + len(line) + msg.size:
                out[msg.id] = msg
    return out


@dataclass(eq=False)
class _Receiver:
    index: int
    proc: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    claimed: set[IdemKey] = field(default_factory=set)
    """Keys this process may be committing now: settled from its log if it dies."""


class ReceiverPool:
    """The first receiving process's side: starts, serves, watches and restarts the others."""

    def __init__(self, mta: MtaApp, config_path: Path, deliver: Callable[[SpooledMessage, str], None]) -> None:
        self.mta = mta
        self.config_path = config_path
        self.deliver = deliver
        self.count = mta.processes
        self.forwarded: dict[int, set[str]] = {}
        """Per other process, ids handed to the delivery process whose files may still be queued."""
        self._receivers: dict[int, _Receiver] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def index(self) -> IdempotencyIndex:
        return self.mta.spool.idem

    def _task(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        for i in range(1, self.count):
            self.forwarded[i] = set()
            await self._spawn(i)
        self._task(self._prune_loop(), "receivers-prune")

    async def _spawn(self, i: int) -> None:
        parent, child = socket.socketpair()
        fds = [fd for _, fd in self.mta.listen_fds]
        args = [f"--listener={kind}={fd}" for kind, fd in self.mta.listen_fds]
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "smtpinfra_mta", "receive", "--config", str(self.config_path),
                "--index", str(i), "--control-fd", str(child.fileno()), *args,
                "--log-level", logging.getLevelName(logging.getLogger().level),
                pass_fds=(child.fileno(), *fds),
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=LINE_LIMIT)
        receiver = self._receivers[i] = _Receiver(i, proc, writer)
        self._task(self._serve(receiver, reader), f"receiver-{i}")

    async def _serve(self, r: _Receiver, reader: asyncio.StreamReader) -> None:
        shard = shard_name(r.index)
        forwarded = self.forwarded[r.index]
        try:
            while line := await reader.readline():
                tag, _, body = line.rstrip(b"\n").partition(b"\t")
                if tag == b"c":
                    msg = SpooledMessage.from_json(body)
                    forwarded.add(msg.id)
                    if msg.idempotency_key:
                        key = (msg.tenant, msg.idempotency_key)
                        r.claimed.discard(key)
                        self.index.settle(key, msg.id, msg.received_at)
                    self.deliver(msg, shard)
                elif tag == b"q":
                    n, tenant, key = json.loads(body)
                    self._task(self._claim(r, int(n), (str(tenant), str(key))), "idempotency-claim")
                elif tag == b"s":
                    tenant, key = json.loads(body)
                    r.claimed.discard((tenant, key))
                    self.index.settle((tenant, key), None, 0.0)
                elif tag == b"m":
                    self.mta.metrics.others[r.index] = json.loads(body)
        except (OSError, ValueError, KeyError, TypeError, asyncio.LimitOverrunError) as exc:
            log.error("receiving process link failed", extra={"index": r.index, "error": str(exc)})
            r.proc.kill()
        code = await r.proc.wait()
        self.mta.metrics.others.pop(r.index, None)
        await self._adopt(r)
        if self._closing:
            return
        log.error("receiving process exited; restarting it", extra={"index": r.index, "code": code})
        delay = 1.0
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                await self._spawn(r.index)
                return
            except OSError as exc:
                log.error("receiving process did not start", extra={"index": r.index, "error": str(exc)})
                delay = min(delay * 2, RESTART_DELAY_MAX)

    async def _claim(self, r: _Receiver, n: int, key: IdemKey) -> None:
        error = None
        try:
            existing = await self.index.claim(key)
        except CommitFailed as exc:
            existing, error = None, str(exc)
        if existing is None and error is None:
            r.claimed.add(key)
        with contextlib.suppress(OSError, RuntimeError):
            r.writer.write(json.dumps([n, existing, error]).encode() + b"\n")

    async def _adopt(self, r: _Receiver) -> None:
        """After a receiving process died: settle its claims and hand over what it committed but never sent."""
        shard = shard_name(r.index)
        accepted, queued = await asyncio.to_thread(_read_shard, self.mta.cfg.spool.directory / shard,
                                                   self.index.retention)
        for key in r.claimed:
            self.index.settle(key, accepted.lookup(key), time.time())
        r.claimed.clear()
        forwarded = self.forwarded[r.index]
        orphans = [m for i, m in queued.items() if i not in forwarded]
        forwarded.intersection_update(queued)
        forwarded.update(m.id for m in orphans)
        if orphans:
            log.warning("handing over messages a receiving process committed but did not pass on",
                        extra={"index": r.index, "messages": len(orphans)})
        for msg in orphans:
            self.deliver(msg, shard)

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL)
            for i, ids in list(self.forwarded.items()):
                queue = self.mta.cfg.spool.directory / shard_name(i) / "queue"
                names = await asyncio.to_thread(_listdir, queue)
                ids.intersection_update(n[:-4] for n in names if n.endswith(".msg"))

    async def stop(self, grace: float = 30.0) -> None:
        """SIGTERM to every other receiving process (each drains); kill what is left after ``grace``."""
        self._closing = True
        procs = [r.proc for r in self._receivers.values() if r.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), timeout=grace)
            except TimeoutError:
                p.kill()
                await p.wait()
        # each link reads to its end, so what a process committed while draining reaches delivery now
        serving = [t for t in self._tasks if t.get_name().startswith("receiver-") and not t.done()]
        if serving:
            await asyncio.wait(serving, timeout=10.0)
        for task in list(self._tasks):
            task.cancel()


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)  # noqa: PTH208 (names only, for a large queue)
    except FileNotFoundError:
        return []


def _read_shard(shard_dir: Path, retention: float) -> tuple[IdempotencyIndex, dict[str, SpooledMessage]]:
    accepted = IdempotencyIndex(retention)
    with contextlib.suppress(FileNotFoundError):
        accepted.load((shard_dir / "idempotency.log").read_bytes())
    return accepted, queued_envelopes(shard_dir)


class FirstProcess:
    """Another receiving process's link to the first: its idempotency authority and its way to delivery."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._writer: asyncio.StreamWriter | None = None
        self._replies: dict[int, asyncio.Future[tuple[str | None, str | None]]] = {}
        self._seq = 0
        self.closed = asyncio.Event()
        self._reader_task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=self._fd),
                                                                  limit=LINE_LIMIT)
        self._reader_task = asyncio.create_task(self._read(reader), name="first-process-replies")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                n, existing, error = json.loads(line)
                fut = self._replies.pop(int(n), None)
                if fut is not None and not fut.done():
                    fut.set_result((existing, error))
        except (OSError, ValueError, TypeError, asyncio.LimitOverrunError) as exc:
            log.error("link to the first receiving process failed", extra={"error": str(exc)})
        self.closed.set()
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(CommitFailed("the first receiving process is gone"))
                fut.exception()
        self._replies.clear()

    def _send(self, tag: bytes, body: bytes) -> None:
        if self._writer is None or self._writer.is_closing() or self.closed.is_set():
            raise CommitFailed("the first receiving process is gone")
        self._writer.write(tag + b"\t" + body + b"\n")

    async def claim(self, key: IdemKey) -> str | None:
        self._seq += 1
        fut: asyncio.Future[tuple[str | None, str | None]] = asyncio.get_running_loop().create_future()
        self._replies[self._seq] = fut
        self._send(b"q", json.dumps([self._seq, key[0], key[1]]).encode())
        existing, error = await fut
        if error is not None:
            raise CommitFailed(error)
        return existing

    def settle(self, key: IdemKey, msg_id: str | None, accepted_at: float) -> None:
        """A failed commit frees the key now; a successful one is settled by its ``c`` line (forward)."""
        if msg_id is None:
            with contextlib.suppress(CommitFailed):
                self._send(b"s", json.dumps(list(key)).encode())

    def forward(self, msg: SpooledMessage) -> None:
        with contextlib.suppress(CommitFailed):  # if the first process is gone, its successor scans the shard
            self._send(b"c", msg.to_json())

    def ready(self) -> None:
        self._send(b"r", b"")

    async def push_metrics(self, metrics: Metrics) -> None:
        while not self.closed.is_set():
            with contextlib.suppress(CommitFailed):
                self._send(b"m", json.dumps(metrics.snapshot()).encode())
            await asyncio.sleep(METRICS_INTERVAL)


async def serve_receiving(config_path: Path, index: int, control_fd: int,
                          listeners: list[tuple[ListenerKind, int]]) -> None:
    """Receiving process ``index`` ≥ 1: accept on the inherited sockets until SIGTERM or the first one goes."""
    cfg = load_config(config_path)
    first = FirstProcess(control_fd)
    await first.open()
    mta = MtaApp(cfg, config_path, role="accept", shard=shard_name(index))
    mta.spool.authority = first
    mta.forward = first.forward
    mta.inherited = [(kind, socket.socket(fileno=fd)) for kind, fd in listeners]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await mta.start(http=False, watch_config=True)
    first.ready()
    pusher = asyncio.create_task(first.push_metrics(mta.metrics), name="metrics-push")
    gone = asyncio.create_task(first.closed.wait())
    await asyncio.wait([gone, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    pusher.cancel()
    mta.close_listeners()
    await mta.drain(grace=30.0)
