"""Durable spool: fsync before 250, group commit, recovery, idempotency across restarts, SIGKILL."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from smtpinfra_mta.spool import MAGIC, Spool, SpooledMessage, new_message_id

from .conftest import MTA_ADDR, PASSWORDS, Dns, base_config, wait_for, wait_port

pytestmark = pytest.mark.mta


def _msg(tenant: str = "t", key: str | None = None, rcpts: list[str] | None = None) -> SpooledMessage:
    return SpooledMessage(id=new_message_id(), tenant=tenant, pool="p", mail_from="a@x.test",
                          rcpts=rcpts or ["r@y.test"], received_at=time.time(), idempotency_key=key)


def test_commit_recover_and_done_records(tmp_path: Path) -> None:
    async def first() -> list[str]:
        spool = Spool(tmp_path)
        assert await spool.open() == []
        ids = []
        for i in range(3):
            content = f"Subject: {i}\r\n\r\nbody\r\n".encode()
            msg_id, dup = await spool.commit(_msg(rcpts=["a@y.test", "b@z.test"]), content)
            assert not dup
            ids.append(msg_id)
        recovered_view = {m.id for m in spool._recover()}  # what a restart would see right now
        assert recovered_view == set(ids)
        m0 = _msg()
        m0.id, m0.rcpts = ids[0], ["a@y.test", "b@z.test"]
        await spool.record_done(m0, [("a@y.test", "delivered")])
        await spool.close()
        return ids

    ids = asyncio.run(first())

    async def second() -> None:
        spool = Spool(tmp_path)
        recovered = {m.id: m for m in await spool.open()}
        assert set(recovered) == set(ids)
        assert recovered[ids[0]].pending == ["b@z.test"]
        assert recovered[ids[1]].pending == ["a@y.test", "b@z.test"]
        assert spool.read_content(ids[2]) == b"Subject: 2\r\n\r\nbody\r\n"
        await spool.record_done(recovered[ids[0]], [("b@z.test", "bounced")])
        assert ids[0] not in spool.queued_ids()
        await spool.close()

    asyncio.run(second())
    assert not list((tmp_path / "tmp").iterdir())


def test_group_commit_batches_concurrent_sessions(tmp_path: Path) -> None:
    async def run() -> tuple[int, int]:
        spool = Spool(tmp_path, group_commit_window=0.005)
        await spool.open()
        results = await asyncio.gather(*(spool.commit(_msg(), b"x\r\n") for _ in range(50)))
        await spool.close()
        return len({r[0] for r in results}), spool.commit_rounds

    n, rounds = asyncio.run(run())
    assert n == 50
    assert rounds < 10  # 50 messages, far fewer fsync rounds


def test_idempotency_survives_restart_and_is_per_tenant(tmp_path: Path) -> None:
    async def run() -> None:
        spool = Spool(tmp_path)
        await spool.open()
        a, dup_a = await spool.commit(_msg("t1", "k1"), b"1")
        # concurrent duplicates resolve to the same id, written once
        res = await asyncio.gather(spool.commit(_msg("t1", "k2"), b"2"), spool.commit(_msg("t1", "k2"), b"2"))
        assert res[0][0] == res[1][0] and sorted([res[0][1], res[1][1]]) == [False, True]
        await spool.close()
        spool = Spool(tmp_path)
        await spool.open()
        assert await spool.commit(_msg("t1", "k1"), b"1") == (a, True)
        other, dup = await spool.commit(_msg("t2", "k1"), b"1")
        assert not dup and other != a
        assert not dup_a
        assert len(spool.queued_ids()) == 3
        await spool.close()

    asyncio.run(run())


def test_corrupt_file_is_moved_aside_not_lost(tmp_path: Path) -> None:
    async def run() -> None:
        spool = Spool(tmp_path)
        await spool.open()
        await spool.close()
        (tmp_path / "queue" / "bogus.msg").write_bytes(b"not a spool file")
        (tmp_path / "tmp" / "half-written").write_bytes(MAGIC)
        spool = Spool(tmp_path)
        assert await spool.open() == []
        assert (tmp_path / "corrupt" / "bogus.msg").exists()
        assert not (tmp_path / "tmp" / "half-written").exists()
        await spool.close()

    asyncio.run(run())


def test_a_message_removed_during_recovery_is_skipped_not_fatal(tmp_path: Path) -> None:
    """With a separate delivery process, the one still finishing after its SMTP process was killed
    deletes delivered files while the restarted process scans them: recovery crashed on the rename
    to corrupt/ and the MTA never opened its port."""
    async def run() -> None:
        spool = Spool(tmp_path)
        await spool.open()
        gone, _ = await spool.commit(_msg(), b"Subject: gone\r\n\r\nbody\r\n")
        kept, _ = await spool.commit(_msg(), b"Subject: kept\r\n\r\nbody\r\n")
        await spool.close()
        spool = Spool(tmp_path)
        read = spool._read_envelope

        def delivered_meanwhile(path: Path) -> Any:
            if path.stem == gone:
                path.unlink()  # the other process delivered it between the listing and this read
            return read(path)

        spool._read_envelope = delivered_meanwhile  # type: ignore[method-assign]
        assert [m.id for m in await spool.open()] == [kept]
        assert not list((tmp_path / "corrupt").iterdir())
        await spool.close()

    asyncio.run(run())


def test_torn_file_from_an_unflushed_round_is_moved_aside(tmp_path: Path) -> None:
    """A crash before a round's flush can leave a renamed file shorter than its envelope says: never acked."""
    async def run() -> None:
        spool = Spool(tmp_path)
        await spool.open()
        kept, _ = await spool.commit(_msg(), b"Subject: kept\r\n\r\nbody\r\n")
        torn, _ = await spool.commit(_msg(), b"Subject: torn\r\n\r\nbody\r\n")
        await spool.close()
        path = tmp_path / "queue" / f"{torn}.msg"
        path.write_bytes(path.read_bytes()[:-5])
        spool = Spool(tmp_path)
        assert [m.id for m in await spool.open()] == [kept]
        assert (tmp_path / "corrupt" / f"{torn}.msg").exists()
        await spool.close()

    asyncio.run(run())


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "fdatasync-per-file"])
def test_both_flush_strategies_make_a_round_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    syncfs: bool) -> None:
    """One syncfs per round where libc has it; otherwise an fdatasync per file, then the directory."""
    import smtpinfra_mta.spool as spool_mod

    calls: list[str] = []
    real_syncfs, real_fdatasync = spool_mod._SYNCFS, os.fdatasync
    assert real_syncfs is not None, "this Linux libc has syncfs(2)"

    def counting_syncfs(fd: int) -> int:
        calls.append("syncfs")
        return real_syncfs(fd)

    def counting_fdatasync(fd: int) -> None:
        calls.append("fdatasync")
        real_fdatasync(fd)

    monkeypatch.setattr(spool_mod, "_SYNCFS", counting_syncfs if syncfs else None)
    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)

    async def run() -> list[str]:
        spool = Spool(tmp_path, group_commit_window=0.05)
        await spool.open()
        calls.clear()
        results = await asyncio.gather(*(spool.commit(_msg(key=f"k{i}"), b"Subject: x\r\n\r\nb\r\n")
                                         for i in range(5)))
        assert spool.commit_rounds == 1
        await spool.close()
        return [r[0] for r in results]

    ids = asyncio.run(run())
    if syncfs:
        assert calls == ["syncfs"]
    else:
        assert calls == ["fdatasync"] * 6  # five messages and the idempotency log
    monkeypatch.setattr(spool_mod, "_SYNCFS", real_syncfs)

    async def reopen() -> None:
        spool = Spool(tmp_path)
        assert sorted(m.id for m in await spool.open()) == sorted(ids)
        assert spool.lookup_idempotent("t", "k3") == ids[3]
        await spool.close()

    asyncio.run(reopen())


# ----------------------------------------------------------------------------- whole process, SIGKILL


def _start_mta(cfg: dict[str, Any], path: Path) -> subprocess.Popen[bytes]:
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "smtpinfra_mta", "serve", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=(path.parent / "mta.log").open("ab"))
    wait_port(MTA_ADDR, cfg["listeners"]["submission"]["port"], timeout=20)
    return proc


def _send(port: int, seq: int) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(MTA_ADDR, port, timeout=20) as s:
        s.starttls(context=ctx)
        s.login("alice", PASSWORDS["alice"])
        msg = f"From: n@alpha.test\r\nTo: r@example.test\r\nSubject: seq {seq}\r\nX-Seq: {seq}\r\n\r\nbody {seq}\r\n"
        s.sendmail("n@alpha.test", [f"r{seq}@example.test"], msg)
    return str(seq)


@pytest.mark.dns
def test_sigkill_during_submission_loses_no_acknowledged_message(
    tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], dns_server: Dns, sink_factory: Any
) -> None:
    sink = sink_factory()
    # First life: no working resolver, so everything stays queued; killed mid-stream.
    cfg = base_config(tmp_path, tls_files, password_hashes, sink_port=sink.port)
    cfg["listeners"]["implicit_tls"]["enabled"] = False
    cfg["tenants"][0]["quotas"] = {"per_hour": 100000}
    proc = _start_mta(cfg, tmp_path / "mta.yaml")
    acked: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(start: int) -> None:
        seq = start
        while not stop.is_set():
            try:
                _send(cfg["listeners"]["submission"]["port"], seq)
            except (OSError, smtplib.SMTPException):
                return
            with lock:
                acked.append(seq)
            seq += 100

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 12, timeout=60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= 12
    # Second life: resolver and sink available; the recovered queue must drain completely.
    cfg["delivery"]["resolver"] = {"address": dns_server.address, "port": dns_server.port, "timeout": "3s"}
    proc = _start_mta(cfg, tmp_path / "mta.yaml")
    try:
        got = {int(m.rcpts[0][1:].split("@")[0]) for m in sink.wait_messages(len(acked), timeout=60)}
        assert set(acked) <= got
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_commit_survives_a_client_that_hangs_up(tmp_path: Path) -> None:
    async def run() -> None:
        spool = Spool(tmp_path, group_commit_window=0.05)
        await spool.open()
        seen: list[SpooledMessage] = []
        committed = asyncio.Event()

        def on_committed(msg: SpooledMessage) -> None:
            seen.append(msg)
            committed.set()
        spool.on_committed = on_committed
        task = asyncio.create_task(spool.commit(_msg(), b"x\r\n"))
        await asyncio.sleep(0.01)
        task.cancel()  # aiosmtpd cancels the DATA handler when the client disconnects
        await asyncio.wait_for(committed.wait(), 30)  # the group commit finishes anyway
        assert len(seen) == 1  # still handed to the scheduler, not stranded on disk
        assert spool.queued_ids() == [seen[0].id]
        await spool.close()

    asyncio.run(run())


def test_dockerfile_runs_as_non_root_with_spool_volume() -> None:
    text = (Path(__file__).parents[2] / "mta-image" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11(\.\d+)?-slim", text, re.MULTILINE), "a slim Python 3.11 base"
    assert "USER 10025:10025" in text
    assert 'VOLUME ["/var/spool/smtp-infra"]' in text
    assert 'ENTRYPOINT ["smtp-infra", "mta"]' in text
    assert 'CMD ["serve", "--config", "/etc/smtp-infra/mta.yaml"]' in text
