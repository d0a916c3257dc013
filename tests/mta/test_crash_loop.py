"""No loss under a crash loop, with Postfix's smtp-source as the client (not our own Python client).

The MTA relays a relay domain over a static route to smtp-sink and is SIGKILLed repeatedly while
smtp-source pushes mail into port 25. smtp-source's own counter (``-c``) is bumped when it *sends* the
final dot, before the reply, so it cannot tell acknowledged messages from in-flight ones. A byte-level
proxy between smtp-source and the MTA therefore counts the ``250 ... queued as`` replies the MTA sent:
those are the promises. Every one of them must reach the sink (at-least-once: a kill between the sink's
250 and the spool unlink redelivers, never loses).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import MTA_ADDR, SINK_ADDR, Sink, base_config, free_port, wait_for, wait_port

pytestmark = pytest.mark.mta

LIVES = 4
PROXY_ADDR = "127.0.0.11"


def _start(cfg: dict[str, Any], path: Path) -> subprocess.Popen[bytes]:
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "smtpinfra_mta", "serve", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=(path.parent / "mta.log").open("ab"))
    wait_port(MTA_ADDR, cfg["listeners"]["inbound"]["port"], timeout=30)
    return proc


class AckCountingProxy:
    """A TCP relay (own thread and event loop) counting the MTA's '250 2.0.0 OK queued' replies."""

    MARK = b"250 2.0.0 OK queued as "

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.listen, self.upstream = listen, upstream
        self.acked = 0
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._client, *self.listen))
        self._started.set()
        self.loop.run_forever()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: bool) -> None:
        tail = b""
        try:
            while data := await reader.read(65536):
                if count:
                    window = tail + data
                    self.acked += window.count(self.MARK)
                    tail = window[-(len(self.MARK) - 1):]
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer, False), self._pipe(up_reader, writer, True))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def _sink_count(sink: Sink) -> int:
    return len(list(sink.directory.glob("m.*")))


def _delivery_processes(config: Path) -> list[int]:
    """PIDs of delivery processes (delivery.separate_process) started for this config file."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"deliver" in cmd and str(config).encode() in cmd:
            pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize("separate_process", [False, True], ids=["one-process", "separate-delivery-process"])
def test_sigkill_loop_with_smtp_source_loses_nothing(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str],
                                                     sink_factory: Any, separate_process: bool) -> None:
    """With a separate delivery process, only the SMTP process is killed: the orphaned delivery process must
    notice, exit, and let the next one (which waits for its lock) rescan the shard."""
    sink: Sink = sink_factory()
    cfg = base_config(tmp_path, tls_files, password_hashes)
    cfg["delivery"]["separate_process"] = separate_process
    cfg["http"]["delivery_port"] = free_port(MTA_ADDR)
    cfg["listeners"]["inbound"]["relay_domains"] = [{"domain": "internal.test", "pool": "alpha"}]
    cfg["delivery"]["routes"] = [{"domain": "internal.test", "host": SINK_ADDR, "port": sink.port}]
    cfg["listeners"]["implicit_tls"]["enabled"] = False
    proxy_port = free_port(PROXY_ADDR)
    proxy = AckCountingProxy((PROXY_ADDR, proxy_port), (MTA_ADDR, cfg["listeners"]["inbound"]["port"]))
    rng = random.Random(7)
    per_life: list[int] = []
    try:
        for life in range(LIVES):
            proc = _start(cfg, tmp_path / "mta.yaml")
            before = proxy.acked
            load = subprocess.Popen(
                ["/usr/sbin/smtp-source", "-s", "8", "-m", "2000", "-l", "512", "-f", "x@partner.test",
                 "-t", "user@internal.test", f"{PROXY_ADDR}:{proxy_port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.6, 1.2))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            load.wait(30)
            assert load.returncode != 0, f"life {life}: smtp-source finished before the kill; nothing was tested"
            time.sleep(0.2)  # let the proxy pass on what the MTA wrote before it died
            per_life.append(proxy.acked - before)
    finally:
        proxy.close()
    acked = sum(per_life)
    assert acked > 0 and all(n > 0 for n in per_life), per_life
    proc = _start(cfg, tmp_path / "mta.yaml")  # the last life recovers the spool and drains it
    try:
        try:
            wait_for(lambda: _sink_count(sink) >= acked, timeout=60, interval=0.2)
        except AssertionError:
            raise AssertionError(f"acked {acked} (per life {per_life}), sink has {_sink_count(sink)}") from None
        queue = Path(cfg["spool"]["directory"]) / "queue"
        wait_for(lambda: not list(queue.glob("*.msg")), timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0
    wait_for(lambda: _delivery_processes(tmp_path / "mta.yaml") == [], timeout=15)
    delivered = _sink_count(sink)
    assert delivered >= acked
    # duplicates are possible (at-least-once) but only a handful per kill, never a resend of everything
    assert delivered <= acked + LIVES * 100, (delivered, acked)
