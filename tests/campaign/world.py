"""A campaign world for the sender's integration tests: the local control plane (Campaign, Tenant,
ConfigMap, Lease), a real MTA process in the test and smtp-sink as every recipient's MX.

The sender runs as `smtp-infra campaign send` in a child process, exactly as the Job runs it, so
tests can SIGKILL it.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtpinfra_campaign.ledger import State, open_ledger
from tests.kube import ROOT, apply, find, wait_for
from tests.mta.conftest import MTA_ADDR, PASSWORDS, RunningMta, Sink

from .helpers import spec

NAMESPACE = "tenant-alpha"
UNSUBSCRIBE_KEY = b"campaign-test-unsubscribe-key"


def ensure_tenant(cp: Any) -> None:
    cp.kubectl("create", "namespace", NAMESPACE, check=False)
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Tenant", "metadata": {"name": "alpha"},
               "spec": {"displayName": "Alpha", "namespace": NAMESPACE, "senderDomains": ["alpha.test"]}})


def csv_list(n: int, *, prefix: str, bad_rows: bool = True) -> str:
    lines = ["email,first_name,code"]
    for i in range(n):
        lines.append(f"{prefix}{i}@example.test,User {i},{i:05d}")
        if bad_rows and i == 3:
            lines.append("not-an-address,Bad,1")
        if bad_rows and i == 5:
            lines.append(f"{prefix}extra@example.test,too,many,columns")
    return "\n".join(lines) + "\n"


def create_campaign(cp: Any, name: str, recipients_csv: str, **changes: Any) -> str:
    """A Campaign whose recipients are a CSV in a ConfigMap; returns its uid."""
    cp.kubectl("create", "configmap", f"{name}-list", "-n", NAMESPACE, "--from-file=list.csv=/dev/stdin",
               input=recipients_csv)
    body = spec(recipients={"configMapRef": {"name": f"{name}-list", "key": "list.csv"}}, **changes)
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Campaign",
               "metadata": {"name": name, "namespace": NAMESPACE}, "spec": body})
    return str(find(cp, "campaign", name, NAMESPACE)["metadata"]["uid"])


@dataclass
class SenderRun:
    """`smtp-infra campaign send` as a child process."""

    cp: Any
    mta: RunningMta
    name: str
    ledger_url: str
    workdir: Path
    identity: str = field(default_factory=lambda: f"sender-{uuid.uuid4().hex[:6]}")
    connections: int = 4
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0

    def start(self) -> None:
        key = self.workdir / "unsubscribe.key"
        key.write_bytes(UNSUBSCRIBE_KEY)
        env = {**os.environ, "SMTP_HOST": MTA_ADDR, "SMTP_PORT": str(self.mta.submission_port),
               "SMTP_USERNAME": "alice", "SMTP_PASSWORD": PASSWORDS["alice"], "SMTP_TLS": "starttls",
               "SMTP_TLS_VERIFY": "false", "SMTP_INFRA_UNSUBSCRIBE_KEY_FILE": str(key),
               "SMTP_INFRA_UNSUBSCRIBE_URL": "https://mta.alpha.test/"}
        env.pop("SMTP_INFRA_LEDGER_DSN", None)
        self.runs += 1
        log = (self.workdir / f"{self.identity}.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "smtpinfra_cli", "campaign", "send", "--namespace", NAMESPACE, "--name", self.name,
             "--ledger", self.ledger_url, "--kubeconfig", str(self.cp.kubeconfig), "--identity", self.identity,
             "--connections", str(self.connections)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def wait(self, timeout: float = 300) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def log(self) -> str:
        return (self.workdir / f"{self.identity}.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def ledger_counts(url: str, uid: str) -> dict[State, int]:
    ledger = open_ledger(url)
    try:
        return ledger.counts(uid)
    finally:
        ledger.close()


def lease(cp: Any, name: str) -> dict[str, Any] | None:
    return find(cp, "lease", f"campaign-{name}", NAMESPACE)


def progress(cp: Any, name: str) -> dict[str, Any] | None:
    obj = lease(cp, name)
    text = ((obj or {}).get("metadata", {}).get("annotations") or {}).get("smtpinfra.com/progress")
    return json.loads(text) if text else None


def delivered_by_recipient(sink: Sink, mta: RunningMta, expected: int,
                           timeout: float = 180) -> collections.Counter[str]:
    """Recipients as the sink saw them, once the MTA has nothing left queued and the sink has `expected`."""
    wait_for(lambda: len(sink.messages()) >= expected, timeout=timeout, what=f"{expected} messages at the sink")
    wait_for(lambda: not mta.call(mta.app.spool.queued_ids), timeout=timeout, what="the MTA's queue empty")
    time.sleep(0.5)  # smtp-sink closes its last dump file; the verdict is the counts below
    counts: collections.Counter[str] = collections.Counter()
    for m in sink.messages():
        counts.update(m.rcpts)
    return counts
