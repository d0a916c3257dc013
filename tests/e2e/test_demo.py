"""`scripts/demo.sh` end to end: the chart-installed operator, the examples, mail in the demo's sink.

The demo starts its own control plane (the script is what `make demo` runs), in a state dir of its
own under `.state/` (not under /tmp: the operator pod mounts an emptyDir at /tmp, which would hide
a pod runner state dir below it). Then the demo is run again after its API server, DNS server and
sink were killed: it must bring them back and deliver again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpinfra_testenv.controlplane import default_bin_dir
from tests.kube import ROOT

pytestmark = pytest.mark.e2e


def demo(state: Path, command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SMTP_INFRA_DEMO_STATE": str(state), "COLUMNS": "160"}
    return subprocess.run([str(ROOT / "scripts" / "demo.sh"), command], capture_output=True, text=True, env=env,
                          timeout=900, cwd=ROOT)


@pytest.fixture
def demo_state() -> Iterator[Path]:
    state = ROOT / ".state" / f"test-demo-{uuid.uuid4().hex[:8]}"
    try:
        yield state
    finally:
        demo(state, "down")
        shutil.rmtree(state, ignore_errors=True)


def sink_messages(state: Path) -> list[bytes]:
    """The messages the demo's sink appended to its dump, each from smtp-sink's X-Client-Addr record."""
    path = state / "sink" / "messages"
    if not path.exists():
        return []
    parts = re.split(rb"(?m)^(?=X-Client-Addr: )", path.read_bytes())
    return [p for p in parts if p.startswith(b"X-Client-Addr: ")]


def campaign(state: Path) -> dict[str, Any]:
    out = subprocess.run([str(default_bin_dir() / "kubectl"), "--kubeconfig", str(state / "kubeconfig"),
                          "-n", "tenant-acme", "get", "campaign", "november-newsletter", "-o", "json"],
                         capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


RECIPIENTS = ("alice@example.net", "bob@example.org")
"""examples/campaign.yaml's inline recipients."""


def campaign_messages(state: Path) -> dict[str, list[bytes]]:
    """The sink's messages per campaign recipient (by their To header)."""
    found: dict[str, list[bytes]] = {r: [] for r in RECIPIENTS}
    for message in sink_messages(state):
        to = re.search(rb"(?mi)^To:[^\r\n]*", message)
        for recipient in RECIPIENTS:
            if to is not None and recipient.encode() in to.group(0):
                found[recipient].append(message)
    return found


def check_run(state: Path, result: subprocess.CompletedProcess[str]) -> None:
    """The demo succeeded, its Campaign is Completed, and the sink holds each recipient's message exactly once."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    progress = result.stderr
    assert "Operator, with the chart: helm upgrade --install" in progress
    assert "SmtpServer Ready" in progress
    assert "smtp-infra report at" in result.stdout
    assert "Look around:" in result.stdout and "make demo-down" in result.stdout
    status = campaign(state).get("status", {})
    assert status.get("phase") == "Completed", status
    assert "Campaign Completed" in progress or "The Campaign completed in an earlier run" in progress
    assert {r: len(m) for r, m in campaign_messages(state).items()} == dict.fromkeys(RECIPIENTS, 1)


def test_demo_delivers_and_recovers_after_components_died(demo_state):
    first = demo(demo_state, "up")
    check_run(demo_state, first)
    for [message] in campaign_messages(demo_state).values():
        assert b"DKIM-Signature:" in message and b"From: ACME News <news@news.acme.example.com>" in message
        assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in message
    pods = json.loads((demo_state / "state.json").read_text())["pids"]
    for pid_file in (demo_state / "dns" / "knotd.pid", demo_state / "sink" / "sink.pid"):
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
    os.kill(pods["kube-apiserver"]["pid"], signal.SIGKILL)

    again = demo(demo_state, "up")
    check_run(demo_state, again)
    assert "DNS server started" in again.stderr and "SMTP sink started" in again.stderr
