"""Session fixtures shared by all test suites."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from smtpinfra_testenv.controlplane import ControlPlane
    from smtpinfra_testenv.podrunner import PodRunner


TEST_POD_CIDR = "127.67.0.0/16"
"""The test session's pod IPs: not the pod runner's default (127.66.0.0/16), which the demo uses."""


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A running Kubernetes control plane, started only for sessions that ask for it.

    With ``SMTP_INFRA_KUBECONFIG`` set, the tests use that existing cluster (e.g. the demo's) and
    leave it running; otherwise a private control plane is started in a fresh temporary state
    dir, so a session never collides with a running demo, and is purged at the end.
    """
    from smtpinfra_testenv.controlplane import attach, down, up

    external = os.environ.get("SMTP_INFRA_KUBECONFIG")
    if external:
        yield attach(Path(external))
        return
    state_dir = tmp_path_factory.mktemp("controlplane")
    try:
        yield up(state_dir)
    finally:
        down(state_dir, purge=True)


@pytest.fixture(scope="session")
def pod_runner(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodRunner]:
    """The local pod runner (a minimal kubelet) serving the session control plane.

    Pods whose first image starts with ``smtp-infra/`` really run as local processes (kwok ignores
    them); without this fixture they stay Pending. Processes get this venv's bin dir first on
    PATH, so ``smtp-infra`` and ``python3`` in pod commands are the project's. Logs:
    ``runner.log_path(namespace, pod, container)``; PVC data: ``runner.claim_dir(namespace, claim)``.
    """
    import sys

    from smtpinfra_testenv.podrunner import PodRunner, RunnerConfig

    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])
    # Pod IPs derive from namespace/name, so two runners on one machine must not share a CIDR: the
    # session's pods (the examples' default/outbound-0, say) would take the addresses of the same pods
    # of a demo (test_demo's, or a developer's) in the default CIDR. Two sessions (two work trees) set
    # SMTP_INFRA_RUNNER_POD_CIDR apart.
    config = RunnerConfig(
        kubeconfig=control_plane.kubeconfig, state_dir=tmp_path_factory.mktemp("pod-runner"), path=path,
        pod_cidr=os.environ.get("SMTP_INFRA_RUNNER_POD_CIDR") or TEST_POD_CIDR,
    )
    runner = PodRunner(config)
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()
