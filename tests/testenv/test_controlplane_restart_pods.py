"""`up --run-pods` after a component died brings back everything, the surviving pod runner included.

A private state dir (it kills and restarts its control plane), never the shared session fixture.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpinfra_testenv import controlplane as cpmod

pytestmark = pytest.mark.testenv

MARKER = f"restart-test-{uuid.uuid4().hex}"
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "sleeper", "namespace": "default"},
    "spec": {
        "terminationGracePeriodSeconds": 2,
        "containers": [{"name": "main", "image": "smtp-infra/restart-test:1",
                        "command": ["python3", "-c", "import time; time.sleep(86400)", MARKER]}],
    },
}


@pytest.fixture()
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("restart-pods")
    try:
        yield path
    finally:
        cpmod.down(path, purge=True)


def _pids(path: Path) -> dict[str, int]:
    raw = json.loads((path / "state.json").read_text())
    return {name: rec["pid"] for name, rec in raw["pids"].items()}


def _exists(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _pod_processes() -> set[int]:
    """Pids of the test pod's container process (found by the marker in its command line)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if MARKER.encode() in argv and _exists(int(entry.name)):
                found.add(int(entry.name))
    return found


def _running(cp: cpmod.ControlPlane) -> bool:
    pod = cp.get_json("pod", "sleeper", namespace="default")
    return bool(pod.get("status", {}).get("phase") == "Running") and bool(_pod_processes())


# True: what `make demo` (`smtp-infra testenv up --run-pods`) calls; False: a runner that was running is
# part of the control plane being restarted even when the caller does not ask for pods.
@pytest.mark.parametrize("run_pods", [True, False])
def test_up_after_the_api_server_died_restarts_the_pod_runner(state_dir: Path, run_pods: bool) -> None:
    cp = cpmod.up(state_dir, run_pods=True)
    cp.kubectl("apply", "-f", "-", input=json.dumps(POD))
    cpmod.wait_until(lambda: _running(cp), timeout=60, message="pod sleeper Running")
    before = _pids(state_dir)
    container = _pod_processes()
    runner = before[cpmod.POD_RUNNER]

    os.kill(before["kube-apiserver"], signal.SIGKILL)
    cpmod.wait_until(lambda: not _exists(before["kube-apiserver"]), timeout=10, message="kube-apiserver killed")
    assert _exists(runner)  # the runner outlives the API server: what the restart must take along

    again = cpmod.up(state_dir, run_pods=run_pods)
    after = _pids(state_dir)
    assert cpmod.status(state_dir).running
    assert not _exists(runner), "the old pod runner was left running"
    assert after[cpmod.POD_RUNNER] != runner and _exists(after[cpmod.POD_RUNNER])
    # The pod's process really runs again, started by the new runner.
    cpmod.wait_until(lambda: _running(again) and not _pod_processes() & container, timeout=60,
                     message="pod sleeper's process running again after the restart")

    # And the demo's call, once more, is a no-op on a healthy control plane with its runner.
    cpmod.up(state_dir, run_pods=True)
    assert _pids(state_dir)[cpmod.POD_RUNNER] == after[cpmod.POD_RUNNER]
