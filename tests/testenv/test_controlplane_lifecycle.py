"""up/status/down on a private state dir: idempotence, crash recovery, data kept across restarts.

These tests stop and restart their control plane, so they never use the shared session fixture
(other suites, or a demo cluster, may be running on it).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smtpinfra_testenv import controlplane as cpmod
from smtpinfra_testenv.cli import app

pytestmark = pytest.mark.testenv


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("lifecycle")
    try:
        yield path
    finally:
        cpmod.down(path, purge=True)


def _pids(path: Path) -> dict[str, int]:
    raw = json.loads((path / "state.json").read_text())
    return {name: rec["pid"] for name, rec in raw["pids"].items()}


def _process_exists(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def test_status_reports_every_component_running(state_dir: Path) -> None:
    cp = cpmod.up(state_dir)
    st = cpmod.status(state_dir)
    assert st.running and st.api_healthy
    assert [c.name for c in st.components] == list(cpmod.COMPONENTS)
    ports = set()
    for comp in st.components:
        assert comp.running and comp.healthy, comp
        assert comp.pid is not None and _process_exists(comp.pid)
        # Detached: re-parented away from the test process, so never our zombie.
        assert int(Path(f"/proc/{comp.pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) != os.getpid()
        assert comp.port is not None
        ports.add(comp.port)
    assert len(ports) == len(cpmod.COMPONENTS)
    assert st.server == cp.server and st.kubeconfig == cp.kubeconfig

    result = CliRunner().invoke(app, ["status", "--state-dir", str(state_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["running"] is True
    result = CliRunner().invoke(app, ["kubeconfig", "--state-dir", str(state_dir)])
    assert result.stdout.strip() == str(cp.kubeconfig)


def test_up_is_a_no_op_when_running(state_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A healthy control plane is found and returned as is (how long that takes: bench/testenv_start.py)."""
    first = cpmod.up(state_dir)
    pids = _pids(state_dir)
    caplog.set_level(logging.INFO, logger=cpmod.__name__)
    caplog.clear()
    second = cpmod.up(state_dir)
    assert second == first
    assert _pids(state_dir) == pids, "a healthy control plane must not be restarted"
    assert any(m.endswith("already running") for m in caplog.messages), caplog.messages


def test_up_adds_simulated_nodes_without_restarting(state_dir: Path) -> None:
    cpmod.up(state_dir)
    pids = _pids(state_dir)
    cp = cpmod.up(state_dir, nodes=2)
    assert cp.node_names == ("kwok-node-0", "kwok-node-1")
    assert _pids(state_dir) == pids
    node = cp.get_json("node", "kwok-node-1")
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
    assert cpmod.attach(cp.kubeconfig).node_names == cp.node_names


def test_up_restarts_a_crashed_component(state_dir: Path) -> None:
    cp = cpmod.up(state_dir)
    kwok_pid = _pids(state_dir)["kwok"]
    os.kill(kwok_pid, signal.SIGKILL)
    cpmod.wait_until(lambda: not _process_exists(kwok_pid), timeout=10, message="kwok killed")
    st = cpmod.status(state_dir)
    assert not st.running
    assert not next(c for c in st.components if c.name == "kwok").running

    again = cpmod.up(state_dir)
    assert again.server == cp.server
    assert cpmod.status(state_dir).running
    assert _pids(state_dir)["kwok"] != kwok_pid
    node = again.get_json("node", again.node_names[0])
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])


def test_down_stops_everything_and_up_resumes_the_data(state_dir: Path) -> None:
    cp = cpmod.up(state_dir)
    marker = uuid.uuid4().hex
    cp.kubectl("create", "configmap", "survivor", f"--from-literal=marker={marker}", "-n", "default")
    pids = _pids(state_dir)

    cpmod.down(state_dir)
    alive = [name for name, pid in pids.items() if _process_exists(pid)]
    assert not alive, f"still running after down: {alive}"
    st = cpmod.status(state_dir)
    assert not st.running and not st.api_healthy
    assert not any(c.running for c in st.components)
    assert (state_dir / "etcd").is_dir() and (state_dir / "pki" / "ca.crt").is_file()

    again = cpmod.up(state_dir)  # waits, with its own generous timeout, until the API server is usable
    assert again.server == cp.server and again.kubeconfig == cp.kubeconfig
    assert set(_pids(state_dir).values()).isdisjoint(pids.values())
    data = again.get_json("configmap", "survivor", namespace="default")["data"]
    assert data == {"marker": marker}


def test_down_purge_removes_the_state_dir(state_dir: Path) -> None:
    cpmod.up(state_dir)
    pids = _pids(state_dir)
    result = CliRunner().invoke(app, ["down", "--state-dir", str(state_dir), "--purge"])
    assert result.exit_code == 0, result.output
    assert not state_dir.exists()
    assert not [pid for pid in pids.values() if _process_exists(pid)]
    result = CliRunner().invoke(app, ["status", "--state-dir", str(state_dir)])
    assert result.exit_code == 1
