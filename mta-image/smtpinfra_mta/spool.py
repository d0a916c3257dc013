"""Durable message spool with group commit.

Slightly over 500 lines: commit, recovery and the idempotency log share one durability contract.

Contract: :meth:`Spool.commit` returns only after the message file (envelope + content) and, when
present, its idempotency record are on disk and fsynced, and the directory entry is fsynced. The SMTP
layer answers 250 to DATA only after that. Sessions that finish DATA at the same time share one
commit round (one thread, all files written, then fsynced, renamed, one directory fsync), so the
cost of an fsync is paid per batch rather than per message.

Layout under the spool directory::

    tmp/<id>              message being written (discarded on recovery)
    queue/<id>.msg        committed message: magic line, JSON envelope line, raw content
    queue/<id>.done       append-only JSON lines: recipients finished (delivered/bounced/suppressed)
    idempotency.log       append-only JSON lines: [tenant, key, id, accepted_at]
    corrupt/              unreadable files moved aside on recovery (never silently deleted)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from smtpinfra_mta.idempotency import Authority, CommitFailed, IdempotencyIndex

log = logging.getLogger(__name__)

MAGIC = b"SMTPINFRA-SPOOL-1\n"
Kind = Literal["submission", "dsn", "inbound", "relay"]


def _load_syncfs() -> Callable[[int], int] | None:
    """``syncfs(2)`` from libc, or None where it is missing (then every file is fdatasynced on its own)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


ACCEPT_SHARD = "accept"
"""Spool subdirectory of the (first) receiving process when delivery runs in its own process."""


def shard_name(index: int) -> str:
    """The spool shard of receiving process ``index`` (0 is the first: ``accept``)."""
    return ACCEPT_SHARD if index == 0 else f"{ACCEPT_SHARD}-{index}"


def accept_shards(spool_dir: Path, processes: int) -> list[str]:
    """The shards of ``processes`` receiving processes, and any left in the spool by a larger number before."""
    names = {shard_name(i) for i in range(processes)}
    with contextlib.suppress(FileNotFoundError):
        names |= {p.name for p in spool_dir.iterdir()
                  if p.is_dir() and p.name.startswith(ACCEPT_SHARD + "-") and p.name[len(ACCEPT_SHARD) + 1:].isdigit()}
    return sorted(names, key=lambda n: (len(n), n))


def new_message_id() -> str:
    """Sortable, unique queue id: hex nanoseconds + 48 random bits.

    The bits come from :mod:`random` (seeded by the kernel when each process starts): ids need to be
    unique, not secret, and ``secrets`` asked the kernel for every id, a few percent of the receiving
    process's time.
    """
    return f"{time.time_ns():016x}{random.getrandbits(48):012x}"


@dataclass
class SpooledMessage:
    """The envelope of a queued message; the content stays on disk until delivery needs it."""

    id: str
    tenant: str
    pool: str
    mail_from: str
    rcpts: list[str]
    received_at: float
    kind: Kind = "submission"
    idempotency_key: str | None = None
    size: int = 0
    client: str = ""
    listener: str = ""  # not persisted: only used for the acceptance metric
    shard: str = ""  # not persisted: which spool directory holds it ("" = the delivering process's own)
    done: dict[str, str] = field(default_factory=dict)
    campaign: str | None = None  # "<namespace>/<campaign>" from the Feedback-ID of the tenant's own campaign
    handed_off: bool = False  # taken over from a peer replica: sent from here, never handed on again

    @property
    def pending(self) -> list[str]:
        return [r for r in self.rcpts if r not in self.done]

    def to_json(self) -> bytes:
        d = {
            "id": self.id, "tenant": self.tenant, "pool": self.pool, "mail_from": self.mail_from,
            "rcpts": self.rcpts, "received_at": self.received_at, "kind": self.kind,
            "idempotency_key": self.idempotency_key, "size": self.size, "client": self.client,
        }
        if self.campaign:
            d["campaign"] = self.campaign
        if self.handed_off:
            d["handed_off"] = True
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SpooledMessage:
        d: dict[str, Any] = json.loads(data)
        return cls(
            id=d["id"], tenant=d["tenant"], pool=d["pool"], mail_from=d["mail_from"], rcpts=list(d["rcpts"]),
            received_at=float(d["received_at"]), kind=d.get("kind", "submission"),
            idempotency_key=d.get("idempotency_key"), size=int(d.get("size", 0)), client=d.get("client", ""),
            campaign=d.get("campaign"), handed_off=bool(d.get("handed_off", False)),
        )


def _accepted_at(msg: SpooledMessage) -> float:
    """When this spool took the message: its arrival, or now for mail a peer handed over (which keeps its
    original arrival for the queue lifetime, but must be remembered as a duplicate from now on)."""
    return time.time() if msg.handed_off else msg.received_at


@dataclass
class _Pending:
    msg: SpooledMessage
    content: bytes
    future: asyncio.Future[None]


@dataclass
class _Done:
    msg_id: str
    data: bytes
    finished: bool
    future: asyncio.Future[None]


class SpoolError(Exception):
    """The spool could not persist a message; the SMTP layer answers 451 so the client retries."""


class Spool:
    """Owns one spool directory. Not safe to share a directory between processes."""

    ROUNDS_IN_FLIGHT = 2

    def __init__(self, directory: Path, *, fsync: bool = True, group_commit_window: float = 0.002,
                 idempotency_retention: float = 86400.0, content_cache_bytes: int = 64 * 1024 * 1024) -> None:
        self.directory = directory
        self.queue_dir = directory / "queue"
        self.tmp_dir = directory / "tmp"
        self.corrupt_dir = directory / "corrupt"
        self.idem_path = directory / "idempotency.log"
        self._fsync = fsync
        self._window = group_commit_window
        self._pending: list[_Pending] = []
        self._wakeup: asyncio.Event | None = None
        self._committer: asyncio.Task[None] | None = None
        self.idem = IdempotencyIndex(idempotency_retention)
        self.authority: Authority = self.idem
        self.also_remember: list[Path] = []
        """Other shards' idempotency logs read at recovery (the first of several receiving processes)."""
        """Who decides whether a key is new: this spool's own index, or the first receiving process's."""
        self._idem_file: Any = None
        self.commit_rounds = 0
        self._rounds: set[asyncio.Task[None]] = set()
        self._idem_lock = threading.Lock()  # rounds in flight append to the idempotency log from two threads
        self.on_committed: Callable[[SpooledMessage], None] | None = None
        # Content of queued messages kept in memory (bounded) so delivery does not re-read what was just written.
        self._content: dict[str, bytes] = {}
        self._content_bytes = 0
        self._content_budget = content_cache_bytes
        # Finished-recipient records, written and fsynced in batches like commits (one thread hop per batch).
        self._done_pending: list[_Done] = []
        self._done_wakeup: asyncio.Event | None = None
        self._completer: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self, *, view: bool = False) -> list[SpooledMessage]:
        """Create directories, recover committed messages, start the committer. Returns the queue.

        ``view=True`` opens another process's spool for delivery only (the accepting process of
        ``delivery.separate_process``): it scans the queue and can read and finish messages, but never
        touches ``tmp/`` or the idempotency log, which the owner is using, and cannot commit.
        """
        recovered = await asyncio.to_thread(self._scan_queue if view else self._recover)
        self._wakeup = asyncio.Event()
        if not view:
            self._committer = asyncio.create_task(self._commit_loop(), name="spool-committer")
        self._done_wakeup = asyncio.Event()
        self._completer = asyncio.create_task(self._done_loop(), name="spool-completer")
        return recovered

    async def close(self) -> None:
        """Flush pending commits and stop."""
        if self._committer is not None:
            while self._pending or self._rounds:
                waiting = [asyncio.shield(p.future) for p in self._pending] + [asyncio.shield(t) for t in self._rounds]
                await asyncio.gather(*waiting, return_exceptions=True)
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None
        if self._completer is not None:
            if self._done_pending:
                await asyncio.gather(*(asyncio.shield(d.future) for d in self._done_pending),
                                     return_exceptions=True)
            self._completer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._completer
            self._completer = None
        if self._idem_file is not None:
            self._idem_file.close()
            self._idem_file = None

    def _recover(self) -> list[SpooledMessage]:
        for d in (self.queue_dir, self.tmp_dir, self.corrupt_dir):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():  # never acknowledged, so never promised to anyone
            leftover.unlink(missing_ok=True)
        self.idem.clear()
        for path in [self.idem_path, *self.also_remember]:
            with contextlib.suppress(FileNotFoundError):
                self.idem.load(path.read_bytes())
        self._rewrite_idempotency_log()
        return self._scan_queue()

    def _scan_queue(self) -> list[SpooledMessage]:
        for d in (self.queue_dir, self.tmp_dir, self.corrupt_dir):
            d.mkdir(parents=True, exist_ok=True)
        out: list[SpooledMessage] = []
        for path in sorted(self.queue_dir.glob("*.msg")):
            try:
                msg = self._read_envelope(path)
            except FileNotFoundError:
                continue  # delivered and removed meanwhile by a delivery process still finishing
            except (OSError, ValueError, KeyError) as exc:
                log.error("corrupt spool file moved aside", extra={"file": path.name, "error": str(exc)})
                with contextlib.suppress(FileNotFoundError):
                    path.rename(self.corrupt_dir / path.name)
                continue
            try:
                done = path.with_suffix(".done").read_bytes()
            except FileNotFoundError:
                if not path.exists():
                    continue
                done = b""
            if done:
                for line in done.splitlines():
                    try:
                        rec = json.loads(line)
                        msg.done[rec["rcpt"]] = rec["status"]
                    except (ValueError, KeyError, TypeError):
                        continue
            if not msg.pending:
                self._unlink_message(msg.id)
                continue
            out.append(msg)
        self._fsync_dir(self.queue_dir)
        return out

    def _rewrite_idempotency_log(self) -> None:
        tmp = self.directory / "idempotency.log.tmp"
        with tmp.open("wb") as f:
            for (tenant, key), (msg_id, ts) in self.idem.items():
                f.write(json.dumps([tenant, key, msg_id, ts]).encode() + b"\n")
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())
        tmp.replace(self.idem_path)
        self._fsync_dir(self.directory)
        self._idem_file = self.idem_path.open("ab")

    def _read_envelope(self, path: Path) -> SpooledMessage:
        with path.open("rb") as f:
            if f.readline() != MAGIC:
                raise ValueError("bad magic")
            line = f.readline()
            msg = SpooledMessage.from_json(line)
            length = os.fstat(f.fileno()).st_size
        if length != len(MAGIC) + len(line) + msg.size:  # torn by a crash before the round's flush
            raise ValueError(f"file holds {length} bytes, its envelope promises {len(MAGIC) + len(line) + msg.size}")
        return msg

    # ------------------------------------------------------------------ commit

    def lookup_idempotent(self, tenant: str, key: str) -> str | None:
        """The queue id already accepted for (tenant, key), if remembered here."""
        return self.idem.lookup((tenant, key))

    async def commit(self, msg: SpooledMessage, content: bytes) -> tuple[str, bool]:
        """Persist a message durably. Returns (queue id, duplicate).

        With an idempotency key that was already accepted for this tenant (or is being committed by a
        concurrent session), nothing is written and the earlier id is returned with duplicate=True.
        The write completes even if the calling session is cancelled (client hung up): the committer,
        not the session, hands committed messages to ``on_committed``, so nothing is left unqueued.
        """
        assert self._wakeup is not None, "spool not opened"
        ikey = (msg.tenant, msg.idempotency_key) if msg.idempotency_key else None
        if ikey is not None:
            try:
                existing = await self.authority.claim(ikey)
            except CommitFailed as exc:
                raise SpoolError(str(exc)) from exc
            if existing is not None:
                return existing, True
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        msg.size = len(content)
        self._pending.append(_Pending(msg, content, done))
        self._wakeup.set()
        await asyncio.shield(done)
        return msg.id, False

    def _finish(self, p: _Pending, error: BaseException | None) -> None:
        ikey = (p.msg.tenant, p.msg.idempotency_key) if p.msg.idempotency_key else None
        if error is None:
            if self._content_bytes + len(p.content) <= self._content_budget:
                self._content[p.msg.id] = p.content
                self._content_bytes += len(p.content)
            if ikey is not None:
                if self.authority is not self.idem:
                    self.idem.settle(ikey, p.msg.id, _accepted_at(p.msg))  # for this shard's log compaction
                self.authority.settle(ikey, p.msg.id, _accepted_at(p.msg))
            if not p.future.done():
                p.future.set_result(None)
            if self.on_committed is not None:
                try:
                    self.on_committed(p.msg)
                except Exception:
                    log.exception("on_committed hook failed", extra={"id": p.msg.id})
        else:
            if ikey is not None:
                self.authority.settle(ikey, None, 0.0)
            if not p.future.done():
                p.future.set_exception(SpoolError(str(error)))
                p.future.exception()  # mark retrieved: nobody may be waiting any more

    async def _commit_loop(self) -> None:
        """Form rounds from the sessions waiting to commit; up to ``ROUNDS_IN_FLIGHT`` are written at once.

        A second round starts while the first is still flushing, so a message arriving just after a
        round began waits for its own flush, not for the previous one as well; the file system merges
        concurrent flushes into one journal commit where it can.
        """
        assert self._wakeup is not None
        slots = asyncio.Semaphore(self.ROUNDS_IN_FLIGHT)
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._window > 0:
                await asyncio.sleep(self._window)
            await slots.acquire()  # while every slot is busy the next round keeps growing
            batch, self._pending = self._pending, []
            if not batch:
                slots.release()
                continue
            task = asyncio.create_task(self._commit_round(batch, slots), name="spool-commit-round")
            self._rounds.add(task)
            task.add_done_callback(self._rounds.discard)

    async def _commit_round(self, batch: list[_Pending], slots: asyncio.Semaphore) -> None:
        try:
            await asyncio.to_thread(self._write_batch, batch)
        except Exception as exc:  # disk full, I/O error: every session in the batch gets 451
            log.error("spool commit failed", extra={"error": str(exc), "messages": len(batch)})
            for p in batch:
                self._finish(p, exc)
            return
        finally:
            slots.release()
        self.commit_rounds += 1
        for p in batch:
            self._finish(p, None)

    def _write_batch(self, batch: list[_Pending]) -> None:
        """Write a round of messages and make them durable.

        With ``syncfs(2)`` (Linux) the files are written and renamed into ``queue/`` and then a single
        ``syncfs`` makes all of it durable: file data, the idempotency records and the directory entries,
        in one journal commit, so a round costs one flush however many messages it holds. A pod's spool
        is its own volume, so that flush covers nothing else. A crash before the flush can leave a torn
        file in ``queue/`` for a message that was never acknowledged; recovery checks each file's length
        against its envelope and moves such files aside. Without ``syncfs`` each file is fdatasynced
        before its rename, then the directory once.
        """
        files = []
        batched_sync = self._fsync and _SYNCFS is not None
        tmp_dir, queue_dir = str(self.tmp_dir), str(self.queue_dir)
        try:
            for p in batch:
                tmp = f"{tmp_dir}/{p.msg.id}"  # str paths: per-message pathlib objects cost CPU here
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                files.append((fd, tmp, p))
                os.write(fd, MAGIC + p.msg.to_json() + b"\n")
                view = memoryview(p.content)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            if self._fsync and not batched_sync:
                for fd, _, _ in files:
                    os.fdatasync(fd)
        finally:
            for fd, _, _ in files:
                os.close(fd)
        for _, tmp, p in files:
            os.rename(tmp, f"{queue_dir}/{p.msg.id}.msg")  # noqa: PTH104 (hot path, str paths)
        idem_lines = [
            json.dumps([p.msg.tenant, p.msg.idempotency_key, p.msg.id, _accepted_at(p.msg)]).encode() + b"\n"
            for p in batch
            if p.msg.idempotency_key
        ]
        if idem_lines:
            with self._idem_lock:
                self._idem_file.write(b"".join(idem_lines))
                self._idem_file.flush()
                if self._fsync and not batched_sync:
                    os.fdatasync(self._idem_file.fileno())
        if batched_sync:
            self._syncfs(self.queue_dir)
        else:
            self._fsync_dir(self.queue_dir)

    def _syncfs(self, path: Path) -> None:
        assert _SYNCFS is not None
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _SYNCFS(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs: {os.strerror(err)}")
        finally:
            os.close(fd)

    def _fsync_dir(self, path: Path) -> None:
        if not self._fsync:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ after delivery

    def read_content(self, msg_id: str) -> bytes:
        """The raw message as received (after DKIM signing)."""
        with (self.queue_dir / f"{msg_id}.msg").open("rb") as f:
            f.readline()
            f.readline()
            return f.read()

    def cached_content(self, msg_id: str) -> bytes | None:
        """The content from memory when it is still cached (it is, unless the cache budget was full)."""
        return self._content.get(msg_id)

    async def content(self, msg_id: str) -> bytes:
        """The content, from memory when cached, else read from disk in a worker thread."""
        cached = self._content.get(msg_id)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self.read_content, msg_id)

    async def record_done(self, msg: SpooledMessage, results: Iterable[tuple[str, str]]) -> None:
        """Durably note finished recipients; removes the message once none is pending.

        Records are queued in call order and written by one completer task in batches: per batch, the
        ``.done`` appends are fdatasynced and the unlinks of finished messages share one directory fsync.
        The order guarantees a ``.done`` append never lands after its message was removed.
        """
        lines = []
        for rcpt, status in results:
            msg.done[rcpt] = status
            lines.append(json.dumps({"rcpt": rcpt, "status": status, "at": time.time()}).encode() + b"\n")
        if not lines:
            return
        finished = not msg.pending
        if finished:
            cached = self._content.pop(msg.id, None)
            if cached is not None:
                self._content_bytes -= len(cached)
        assert self._done_wakeup is not None, "spool not opened"
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._done_pending.append(_Done(msg.id, b"".join(lines), finished, fut))
        self._done_wakeup.set()
        await asyncio.shield(fut)

    async def _done_loop(self) -> None:
        assert self._done_wakeup is not None
        while True:
            await self._done_wakeup.wait()
            self._done_wakeup.clear()
            batch, self._done_pending = self._done_pending, []
            if not batch:
                continue
            try:
                await asyncio.to_thread(self._write_done_batch, batch)
            except Exception as exc:
                log.error("spool done-record write failed", extra={"error": str(exc), "records": len(batch)})
                for d in batch:
                    if not d.future.done():
                        d.future.set_exception(SpoolError(str(exc)))
                        d.future.exception()
                continue
            for d in batch:
                if not d.future.done():
                    d.future.set_result(None)

    def _write_done_batch(self, batch: list[_Done]) -> None:
        batched_sync = self._fsync and _SYNCFS is not None
        unlinked = appended = False
        for d in batch:
            if d.finished:
                self._unlink_message(d.msg_id)
                unlinked = True
            else:
                self._append_done(d.msg_id, d.data, sync=not batched_sync)
                appended = True
        if batched_sync and (unlinked or appended):
            self._syncfs(self.queue_dir)
        elif unlinked:
            self._fsync_dir(self.queue_dir)

    def _append_done(self, msg_id: str, data: bytes, *, sync: bool = True) -> None:
        with (self.queue_dir / f"{msg_id}.done").open("ab") as f:
            f.write(data)
            f.flush()
            if self._fsync and sync:
                os.fdatasync(f.fileno())

    def _unlink_message(self, msg_id: str) -> None:
        base = f"{self.queue_dir}/{msg_id}"
        for path in (base + ".msg", base + ".done"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # noqa: PTH108 (hot path, str paths)

    def queued_ids(self) -> list[str]:
        return sorted(p.stem for p in self.queue_dir.glob("*.msg"))
