"""Interoperability with Postfix: its SMTP client relaying through us, and us delivering to its smtpd (which
offers CHUNKING). A recording relay in front of the receiving side shows what went over the wire; the
peers themselves are the real programs."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.mta_throughput import DOMAIN, POSTFIX_ADDR, SINK_ADDR, Processes, postfix

from .conftest import MTA_ADDR, RunningMta, Sink, base_config, free_port, wait_for
from .rawsmtp import RawClient, RecordingProxy, dot_stuff, make_message

pytestmark = pytest.mark.mta

PROXY_ADDR = "127.0.0.44"


@pytest.fixture
def procs() -> Iterator[Processes]:
    p = Processes()
    yield p
    p.stop_all()


@pytest.fixture
def postfix_dir() -> Iterator[Path]:
    """Postfix's daemons run as user postfix and must reach their queue: not under pytest's private tmp."""
    d = Path(tempfile.mkdtemp(prefix="postfix-interop-", dir="/var/tmp"))
    d.chmod(0o755)
    yield d / "postfix"
    shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def recording(listen: tuple[str, int], target: tuple[str, int]) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(listen, target)
    try:
        yield proxy
    finally:
        proxy.stop()


def relay_config(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], host: str,
                 port: int) -> dict[str, Any]:
    cfg = base_config(tmp_path, tls_files, password_hashes)
    cfg["limits"]["max_message_size"] = 12 * 1024 * 1024
    cfg["listeners"]["inbound"]["relay_domains"] = [{"domain": DOMAIN, "pool": "beta"}]
    cfg["delivery"]["routes"] = [{"domain": DOMAIN, "host": host, "port": port}]
    return cfg


def submit_data(host: str, port: int, message: bytes) -> bytes:
    c = RawClient(port, host)
    assert c.cmd(b"EHLO client.test").startswith(b"250 ")
    assert c.cmd(b"MAIL FROM:<a@partner.test>").startswith(b"250")
    assert c.cmd(f"RCPT TO:<user@{DOMAIN}>".encode()).startswith(b"250")
    assert c.cmd(b"DATA").startswith(b"354")
    c.sock.sendall(dot_stuff(message))
    reply = c.reply()
    c.close()
    return reply


@pytest.mark.parametrize("size", [20 * 1024, 1024 * 1024])
def test_we_deliver_to_postfix_with_bdat(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str],
                                         mta_factory: Any, sink_factory: Any, procs: Processes, postfix_dir: Path,
                                         size: int) -> None:
    """Postfix's smtpd offers CHUNKING, so our delivery sends the message as one BDAT LAST chunk (no DATA);
    Postfix forwards it to smtp-sink, where it arrives unchanged below the two Received headers."""
    sink = sink_factory(addr=SINK_ADDR)
    with postfix(procs, postfix_dir, sink.port) as (pf_port, _), \
            recording((PROXY_ADDR, free_port(PROXY_ADDR)), (POSTFIX_ADDR, pf_port)) as proxy:
        mta: RunningMta = mta_factory(relay_config(tmp_path, tls_files, password_hashes, *proxy.listen))
        message = make_message(size, seed=7)
        assert submit_data(MTA_ADDR, mta.inbound_port, message).startswith(b"250 2.0.0 OK queued")
        [m] = wait_for(sink.messages, timeout=120)
        assert m.content.endswith(message)
        assert m.content[:-len(message)].count(b"Received: ") == 2
        sent = bytes(proxy.sent)
        assert f"BDAT {len(m.content) - m.content.index(b'Received: from client.test')} LAST\r\n".encode() in sent
        assert b"\r\nDATA\r\n" not in sent


def test_postfix_relays_through_us(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str],
                                   mta_factory: Any, sink_factory: Any, procs: Processes,
                                   postfix_dir: Path) -> None:
    """Postfix's smtp client (pipelining MAIL/RCPT/DATA, reusing connections) relays through our port 25 to
    smtp-sink: one byte-checked message, then 40 from smtp-source over 4 sessions, all delivered."""
    sink: Sink = sink_factory()
    mta: RunningMta = mta_factory(relay_config(tmp_path, tls_files, password_hashes, "127.0.0.42", sink.port))
    with recording((SINK_ADDR, free_port(SINK_ADDR)), (MTA_ADDR, mta.inbound_port)) as proxy, \
            postfix(procs, postfix_dir, proxy.listen[1]) as (pf_port, _):
        message = make_message(100 * 1024, seed=3)
        assert submit_data(POSTFIX_ADDR, pf_port, message).startswith(b"250")
        [m] = wait_for(sink.messages, timeout=120)
        assert m.content.endswith(message)
        subprocess.run(["/usr/sbin/smtp-source", "-s", "4", "-m", "40", "-l", "20480", "-f", "load@source.test",
                        "-t", f"user@{DOMAIN}", f"{POSTFIX_ADDR}:{pf_port}"], check=True, timeout=120)
        wait_for(lambda: len(sink.messages()) == 41, timeout=180)
        sent = bytes(proxy.sent)
        assert sent.count(b"MAIL FROM:<") == 41
        assert sent.count(b"EHLO ") >= 1
