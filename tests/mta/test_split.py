"""``delivery.separate_process``: the SMTP process and the delivery process, run as ``serve`` runs them.

Covers the paths that cross the process boundary: tenant submission (quota counted by the SMTP process,
VERP applied by the delivery process), an asynchronous DSN received by the SMTP process and acted on by
the delivery process, and a SIGTERM that drains both. (SIGKILL of the SMTP process under load is in
test_crash_loop.py.)
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import MTA_ADDR, Dns, Sink, base_config, free_port, submit, swaks, wait_for, wait_port
from .test_crash_loop import _delivery_processes
from .test_feedback import dsn

pytestmark = [pytest.mark.mta, pytest.mark.dns]


class _Ports:
    """What ``submit()`` needs from a running MTA."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.submission_port = cfg["listeners"]["submission"]["port"]
        self.smtps_port = cfg["listeners"]["implicit_tls"]["port"]


def test_separate_delivery_process_end_to_end(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str],
                                              sink_factory: Any, dns_server: Dns) -> None:
    sink: Sink = sink_factory()
    cfg = base_config(tmp_path, tls_files, password_hashes, dns=dns_server, sink_port=sink.port)
    cfg["delivery"]["separate_process"] = True
    cfg["http"]["delivery_port"] = free_port(MTA_ADDR)
    cfg["tenants"][0]["quotas"] = {"per_hour": 2}
    path = tmp_path / "mta.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "smtpinfra_mta", "serve", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "mta.log").open("ab"))
    try:
        wait_port(MTA_ADDR, cfg["listeners"]["submission"]["port"], timeout=40)
        assert len(_delivery_processes(path)) == 1
        mta: Any = _Ports(cfg)
        assert submit(mta, to="one@example.test").has("250 2.0.0 OK queued")
        assert submit(mta, to="two@example.test").has("250 2.0.0 OK queued")
        assert submit(mta, to="three@example.test").has("452 4.7.1")  # the quota lives in the SMTP process
        got = {m.rcpts[0]: m for m in sink.wait_messages(2, timeout=30)}
        assert set(got) == {"one@example.test", "two@example.test"}
        verp = got["one@example.test"].mail_from
        assert verp.startswith("bounces+") and verp.endswith("@bounces.mta.test")  # set by the delivery process
        r = swaks("--server", f"{MTA_ADDR}:{cfg['listeners']['inbound']['port']}", "--from", "<>", "--to", verp,
                  "--data", "-", stdin=dsn(verp, "one@example.test", "5.1.1", "550 5.1.1 User unknown"))
        assert r.has("250 2.0.0 OK queued"), r.transcript

        def suppressed() -> list[tuple[str, str]]:
            with sqlite3.connect(tmp_path / "suppression.db") as db:
                try:
                    return list(db.execute("SELECT tenant, address FROM suppressions"))
                except sqlite3.OperationalError:
                    return []
        wait_for(lambda: suppressed() == [("alpha", "one@example.test")], timeout=20)
        spool = Path(cfg["spool"]["directory"])
        wait_for(lambda: not list(spool.glob("**/queue/*.msg")), timeout=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0
    wait_for(lambda: _delivery_processes(path) == [], timeout=15)
