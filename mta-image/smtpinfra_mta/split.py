"""``delivery.separate_process``: the SMTP process and one delivery process, linked by a socket pair.

Why two processes: one asyncio process saturates one core receiving *and* delivering; splitting the two
lets a replica use two cores, and under CPU contention gives it two scheduler entities instead of one.
Why one delivery process: warm-up caps, connection limits, rates and queues are each owned by exactly
one process, so none of them needs cross-process coordination. Receiving can take more processes
(``listeners.processes``, :mod:`smtpinfra_mta.receivers`); the first of them runs the link below and
passes on the others' messages, each line naming the spool shard that holds the message.

Protocol: the delivery process writes ``ready`` once it has scanned both spools; then the SMTP process
opens its listeners and sends one envelope (JSON) line per committed message. Nothing depends on a line
arriving: every committed message is a file in the SMTP process's spool shard, and a (re)started delivery
process scans that shard before reading lines, ignoring lines for messages the scan already found.
The delivery process exits when the socket closes (the SMTP process drained or died); the SMTP process
restarts the delivery process if it dies. A lock file keeps a second delivery process from starting
before the previous one has exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from smtpinfra_mta.app import MtaApp
from smtpinfra_mta.config import MtaConfig, load_config
from smtpinfra_mta.spool import ACCEPT_SHARD, SpooledMessage, accept_shards

log = logging.getLogger(__name__)
READY_TIMEOUT = 120.0
LINE_LIMIT = 32 << 20
"""Longest envelope line the delivery process reads: one holds every recipient of a message
(limits.max_recipients allows 100,000), far over asyncio's default of 64 KiB."""


class DeliveryLink:
    """The SMTP process's end: starts, watches and feeds the delivery process."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._closing = False
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        parent, child = socket.socketpair()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "smtpinfra_mta", "deliver", "--config", str(self.config_path),
                "--fd", str(child.fileno()), "--log-level", logging.getLevelName(logging.getLogger().level),
                pass_fds=(child.fileno(),),
            )
        finally:
            child.close()
        reader, self._writer = await asyncio.open_unix_connection(sock=parent)
        line = await asyncio.wait_for(reader.readline(), timeout=READY_TIMEOUT)
        if line.strip() != b"ready":
            raise RuntimeError("the delivery process did not start (see its log)")
        self._watch = asyncio.create_task(self._supervise(self.proc), name="delivery-process")

    async def _supervise(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self._writer = None
        delay = 1.0
        while not self._closing:
            log.error("delivery process exited; restarting it", extra={"code": code})
            await asyncio.sleep(delay)
            try:
                await self.start()  # its scan of the shard picks up everything handed to the old one
                return
            except (OSError, RuntimeError, TimeoutError) as exc:
                log.error("delivery process did not come back", extra={"error": str(exc)})
                delay = min(delay * 2, 30.0)

    def send(self, msg: SpooledMessage, shard: str = ACCEPT_SHARD) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(shard.encode() + b"\t" + msg.to_json() + b"\n")

    async def close(self, grace: float = 30.0) -> None:
        """After the listeners drained: close the socket; the delivery process finishes and exits."""
        self._closing = True
        if self._writer is not None:
            self._writer.close()
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=grace)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def serve_accepting(cfg: MtaConfig, config_path: Path, stop: asyncio.Event) -> None:
    """The SMTP process of separate_process mode, until ``stop`` is set; then drain and stop delivery."""
    link = DeliveryLink(config_path)
    await link.start()
    mta = MtaApp(cfg, config_path, role="accept")
    mta.forward = link.send
    pool = None
    if mta.processes > 1:
        from smtpinfra_mta.receivers import ReceiverPool

        pool = ReceiverPool(mta, config_path, link.send)
        mta.spool.also_remember = [cfg.spool.directory / name / "idempotency.log"
                                   for name in accept_shards(cfg.spool.directory, mta.processes)
                                   if name != ACCEPT_SHARD]
    await mta.start(watch_config=True)
    if pool is not None:
        await pool.start()
    await stop.wait()
    log.info("draining")
    if pool is not None:
        await asyncio.gather(pool.stop(grace=30.0), mta.drain(grace=30.0))
    else:
        await mta.drain(grace=30.0)
    await link.close()


def _lock_delivery(directory: Path) -> int:
    """Block until no other delivery process holds this spool (a predecessor may still be finishing)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "delivery.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


async def serve_delivering(config_path: Path, fd: int) -> None:
    """The delivery process: scan, say ready, then take forwarded messages until the socket closes."""
    cfg = load_config(config_path)
    lock = await asyncio.to_thread(_lock_delivery, cfg.spool.directory)
    mta = MtaApp(cfg, config_path, role="deliver")
    try:
        await mta.start(watch_config=True)
        reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd), limit=LINE_LIMIT)
        writer.write(b"ready\n")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # the SMTP process decides when delivery stops
            loop.add_signal_handler(sig, lambda: None)
        while line := await reader.readline():
            shard, _, envelope = line.partition(b"\t")
            with contextlib.suppress(ValueError, KeyError, UnicodeDecodeError):
                mta.ingest(SpooledMessage.from_json(envelope), shard.decode())
    finally:
        await mta.stop()
        os.close(lock)
