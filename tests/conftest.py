"""Session fixtures shared by all test suites."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from smtpinfra_testenv.controlplane import ControlPlane


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
