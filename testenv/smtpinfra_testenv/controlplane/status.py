"""`status`: which components run and answer their health checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtpinfra_testenv import pki as pkimod

from .layout import COMPONENTS, PORTS, resolve_state_dir
from .processes import alive
from .readiness import AdminApi, health_url, http_ok
from .state import State


@dataclass(frozen=True)
class ComponentStatus:
    """One component: process alive (pid), its main port, and whether its health endpoint is ok."""

    name: str
    running: bool
    pid: int | None
    port: int | None
    healthy: bool


@dataclass(frozen=True)
class Status:
    """What ``status`` found; ``running`` is true only when every component runs and answers."""

    state_dir: Path
    kubeconfig: Path | None
    server: str | None
    api_healthy: bool
    components: tuple[ComponentStatus, ...]

    @property
    def running(self) -> bool:
        return bool(self.components) and all(c.running and c.healthy for c in self.components)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state_dir": str(self.state_dir),
            "kubeconfig": str(self.kubeconfig) if self.kubeconfig else None,
            "server": self.server,
            "api_healthy": self.api_healthy,
            "running": self.running,
            "components": [
                {"name": c.name, "running": c.running, "pid": c.pid, "port": c.port, "healthy": c.healthy}
                for c in self.components
            ],
        }


def status(state_dir: Path | None = None) -> Status:
    """Per-component process and health state of the control plane in ``state_dir``."""
    sd = resolve_state_dir(state_dir)
    st = State.load(sd)
    if st is None:
        return Status(sd, None, None, False, ())
    comps = []
    for name in COMPONENTS:
        rec = st.pids.get(name)
        running = alive(rec)
        port = st.ports.get(PORTS[name][0])
        healthy = False
        if running and name != "kube-apiserver":
            healthy = http_ok(health_url(name, st.ports))
        comps.append(ComponentStatus(name, running, rec["pid"] if rec and running else None, port, healthy))
    server = f"https://127.0.0.1:{st.ports['kube-apiserver']}"
    api_healthy = False
    pki = pkimod.Pki(sd / "pki")
    if comps[1].running and pki.ca_cert.exists():
        api_healthy = AdminApi.for_pki(server, pki).ok("/readyz")
        comps[1] = ComponentStatus(comps[1].name, True, comps[1].pid, comps[1].port, api_healthy)
    kubeconfig = sd / "kubeconfig"
    return Status(sd, kubeconfig if kubeconfig.exists() else None, server, api_healthy, tuple(comps))

