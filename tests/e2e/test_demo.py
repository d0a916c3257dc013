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


def check_run(state: Path, result: subprocess.CompletedProcess[str], delivered_before: int) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    progress = result.stderr
    assert "Operator, with the chart: helm upgrade --install" in progress
    assert "SmtpServer Ready" in progress
    assert "smtp-infra report at" in result.stdout
    assert "Look around:" in result.stdout and "make demo-down" in result.stdout
    if "completed in an earlier run" not in progress:
        assert len(sink_messages(state)) > delivered_before, "no new message reached the demo's sink"
    # What the demo says it waited for matches the Campaign on the cluster.
    status = campaign(state).get("status", {})
    if status.get("phase") == "Completed":
        assert "Campaign Completed" in progress or "The Campaign completed in an earlier run" in progress
    else:
        ready = next(c for c in status.get("conditions", []) if c["type"] == "Ready")
        assert ready["reason"] == "Pending"
        assert "This operator does not run Campaigns yet" in progress


def test_demo_delivers_and_recovers_after_components_died(demo_state):
    first = demo(demo_state, "up")
    check_run(demo_state, first, 0)
    message = sink_messages(demo_state)[0]
    assert b"DKIM-Signature:" in message
    assert b"From: ACME News <news@news.acme.example.com>" in message or b"news.acme.example.com" in message
    pods = json.loads((demo_state / "state.json").read_text())["pids"]
    for pid_file in (demo_state / "dns" / "knotd.pid", demo_state / "sink" / "sink.pid"):
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
    os.kill(pods["kube-apiserver"]["pid"], signal.SIGKILL)

    again = demo(demo_state, "up")
    check_run(demo_state, again, 1)
    assert "DNS server started" in again.stderr and "SMTP sink started" in again.stderr
