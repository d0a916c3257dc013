"""``listeners.processes``: several receiving processes on one set of listening sockets, run as ``serve`` runs them.

What crosses their boundary is tested here with real clients and a real sink: the listening sockets (every
process accepts), the spool shards (the one delivery process delivers from all of them), the idempotency
index (a key is accepted once however the connections spread), the quota counters (one limit for all),
/metrics (the first process serves the sums), and a receiving process killed mid-load (restarted, and
every message it acknowledged is delivered).
"""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import ssl
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import MTA_ADDR, PASSWORDS, SINK_ADDR, Sink, base_config, free_port, submit, wait_for, wait_port
from .test_crash_loop import _delivery_processes

pytestmark = [pytest.mark.mta]

RELAY_DOMAIN = "relay.test"
PROCESSES = 3


def _receivers(config: Path) -> list[int]:
    """PIDs of the further receiving processes started for this config file."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"receive" in cmd and str(config).encode() in cmd:
            pids.append(int(proc.name))
    return sorted(pids)


class _Mta:
    def __init__(self, tmp_path: Path, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.path = tmp_path / "mta.yaml"
        self.path.write_text(yaml.safe_dump(cfg))
        self.spool = Path(cfg["spool"]["directory"])
        self.submission_port = cfg["listeners"]["submission"]["port"]
        self.smtps_port = cfg["listeners"]["implicit_tls"]["port"]
        self.proc = subprocess.Popen([sys.executable, "-m", "smtpinfra_mta", "serve", "--config", str(self.path)],
                                     stdout=subprocess.DEVNULL, stderr=(tmp_path / "mta.log").open("ab"))
        wait_port(MTA_ADDR, self.submission_port, timeout=40)
        wait_for(lambda: len(_receivers(self.path)) == PROCESSES - 1, timeout=30)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for pid in _receivers(self.path) + _delivery_processes(self.path):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def mta(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], sink_factory: Any) -> Any:
    sink: Sink = sink_factory()
    cfg = base_config(tmp_path, tls_files, password_hashes, sink_port=sink.port)
    cfg["delivery"]["separate_process"] = True
    cfg["delivery"]["routes"] = [{"domain": RELAY_DOMAIN, "host": SINK_ADDR, "port": sink.port}]
    cfg["http"]["delivery_port"] = free_port(MTA_ADDR)
    cfg["listeners"]["processes"] = PROCESSES
    cfg["limits"]["max_sessions"] = 1000
    running = _Mta(tmp_path, cfg)
    running.sink = sink  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        running.stop()


def _relay(mta: _Mta, message_id: str, rcpt: str = f"user@{RELAY_DOMAIN}") -> tuple[int, bytes]:
    """One tenant submission on its own connection (STARTTLS, AUTH), as a sending application makes it."""
    body = (f"From: news@alpha.test\r\nTo: {rcpt}\r\nSubject: hello\r\nMessage-ID: <{message_id}>\r\n\r\n"
            "Body line.\r\n")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(MTA_ADDR, mta.submission_port, timeout=30) as client:
        client.ehlo("client.test")
        client.starttls(context=context)
        client.ehlo("client.test")
        client.login("alice", PASSWORDS["alice"])
        client.mail("news@alpha.test")
        client.rcpt(rcpt)
        return client.data(body.encode())


def _shard_keys(mta: _Mta) -> dict[str, int]:
    """Idempotency records per spool shard: what each receiving process committed."""
    out = {}
    for shard in sorted(mta.spool.glob("accept*")):
        log = shard / "idempotency.log"
        out[shard.name] = len(log.read_bytes().splitlines()) if log.exists() else 0
    return out


def _message_id(content: bytes) -> str:
    found = re.search(rb"^Message-ID: (<[^>]*>)\r?$", content, re.MULTILINE | re.IGNORECASE)
    return found.group(1).decode() if found else ""


def _sink_ids(sink: Sink) -> list[str]:
    return [_message_id(m.content) for m in sink.messages()]


def test_every_process_accepts_and_one_delivery_process_delivers_every_shard(mta: Any) -> None:
    ids = [f"m{i}@client.test" for i in range(150)]
    with ThreadPoolExecutor(15) as pool:
        replies = list(pool.map(lambda i: _relay(mta, i), ids))
    assert all(code == 250 for code, _ in replies), replies
    got = mta.sink.wait_messages(len(ids), timeout=60)
    assert sorted(_message_id(m.content) for m in got) == sorted(f"<{i}>" for i in ids)
    per_shard = _shard_keys(mta)
    assert set(per_shard) == {"accept", "accept-1", "accept-2"}, per_shard
    assert sum(per_shard.values()) == len(ids)
    assert all(n > 0 for n in per_shard.values()), f"a receiving process accepted nothing: {per_shard}"
    assert len(_delivery_processes(mta.path)) == 1
    # /metrics on the first process adds up every receiving process's counters
    port = mta.cfg["http"]["port"]

    def accepted() -> float:
        text = urllib.request.urlopen(f"http://{MTA_ADDR}:{port}/metrics", timeout=10).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("smtpinfra_mta_accepted_total{"))
    wait_for(lambda: accepted() == len(ids), timeout=15)


def test_an_idempotency_key_is_accepted_once_across_processes_and_restarts(mta: Any) -> None:
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda _: _relay(mta, "same@client.test"), range(40)))
    assert all(code == 250 for code, _ in replies), replies
    queue_ids = {text.split()[-1] for _, text in replies}
    assert len(queue_ids) == 1, "every retry must get the first attempt's queue id"
    mta.sink.wait_messages(1, timeout=30)
    before = _receivers(mta.path)
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: len(_receivers(mta.path)) == PROCESSES - 1 and not set(_receivers(mta.path)) & set(before),
             timeout=30)
    with ThreadPoolExecutor(10) as pool:
        again = list(pool.map(lambda _: _relay(mta, "same@client.test"), range(20)))
    assert [code for code, _ in again] == [250] * 20
    assert {text.split()[-1] for _, text in again} == queue_ids
    time.sleep(3)  # a wrongly accepted copy would reach the sink within this
    assert _sink_ids(mta.sink) == ["<same@client.test>"]


def test_one_quota_for_all_receiving_processes(mta: Any) -> None:
    cfg = mta.cfg
    cfg["tenants"][0]["quotas"] = {"per_hour": 5}
    mta.path.write_text(yaml.safe_dump(cfg))
    time.sleep(2.5)  # every process reloads its config from the file
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: submit(mta, to=f"r{i}@example.test"), range(12)))
    accepted = [r for r in results if r.has("250 2.0.0 OK queued")]
    refused = [r for r in results if r.has("452 4.7.1")]
    assert len(accepted) == 5, [r.transcript[-300:] for r in results]
    assert len(refused) == 7


def test_a_killed_receiving_process_is_restarted_and_loses_nothing_it_acknowledged(mta: Any) -> None:
    ids = [f"k{i}@client.test" for i in range(240)]
    acked: list[str] = []
    victim = _receivers(mta.path)[0]

    def send(i: str) -> None:
        try:
            code, _ = _relay(mta, i)
        except (OSError, smtplib.SMTPException):
            return  # the connection died with the process: not acknowledged, the client would retry
        if code == 250:
            acked.append(i)
        if len(acked) == 60:
            os.kill(victim, signal.SIGKILL)

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(send, ids))
    assert victim not in _receivers(mta.path)
    wait_for(lambda: len(_receivers(mta.path)) == PROCESSES - 1, timeout=30)
    assert len(acked) > 120
    wait_for(lambda: {f"<{i}>" for i in acked} <= set(_sink_ids(mta.sink)), timeout=60)
    # and the restarted process takes connections again
    with ThreadPoolExecutor(15) as pool:
        after = list(pool.map(lambda i: _relay(mta, f"after{i}@client.test"), range(60)))
    assert all(code == 250 for code, _ in after)


def test_config_refuses_several_receivers_without_a_delivery_process(tmp_path: Path, tls_files: Any,
                                                                     password_hashes: dict[str, str]) -> None:
    from smtpinfra_mta.config import ConfigError, load_config

    cfg = base_config(tmp_path, tls_files, password_hashes)
    cfg["listeners"]["processes"] = 2
    path = tmp_path / "mta.yaml"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="separate_process"):
        load_config(path)


def test_an_envelope_larger_than_a_default_stream_line_crosses_the_process_links(mta: Any) -> None:
    """3,000 recipients make an envelope of ~120 KB: over asyncio's 64 KiB line default on every link."""
    cfg = mta.cfg
    cfg["limits"]["max_recipients"] = 3000
    mta.path.write_text(yaml.safe_dump(cfg))
    time.sleep(2.5)  # every process reloads its config from the file
    rcpts = [f"recipient-number-{i:05d}@{RELAY_DOMAIN}" for i in range(3000)]
    delivery = _delivery_processes(mta.path)
    receivers = _receivers(mta.path)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(MTA_ADDR, mta.submission_port, timeout=60) as client:
        client.ehlo("client.test")
        client.starttls(context=context)
        client.ehlo("client.test")
        client.login("alice", PASSWORDS["alice"])
        body = b"From: news@alpha.test\r\nSubject: many\r\nMessage-ID: <many@client.test>\r\n\r\nHi\r\n"
        refused = client.sendmail("news@alpha.test", rcpts, body)
    assert refused == {}

    def delivered() -> int:
        return sum(len(m.rcpts) for m in mta.sink.messages())
    wait_for(lambda: delivered() == len(rcpts), timeout=120)
    assert sorted(r for m in mta.sink.messages() for r in m.rcpts) == sorted(rcpts)
    # delivered through the links, not found by a restarted process's scan of the spool
    assert _delivery_processes(mta.path) == delivery and _receivers(mta.path) == receivers
