"""The handle given to callers of a running control plane (`ControlPlane`), and `attach` to an existing one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .audit import AUDIT_LOG
from .layout import KUBECONFIG_EXTENSION, POD_CIDR, SERVICE_CIDR, KubectlError, default_bin_dir


@dataclass(frozen=True)
class ControlPlane:
    """How to talk to a running control plane.

    ``state_dir`` is None when attached to a cluster this module did not start (then ``down``
    is not ours to call).
    """

    kubeconfig: Path
    server: str
    bin_dir: Path
    state_dir: Path | None
    pod_cidr: str = POD_CIDR
    service_cidr: str = SERVICE_CIDR
    node_names: tuple[str, ...] = field(default_factory=tuple)

    @property
    def kubectl_path(self) -> Path:
        """The cached kubectl, falling back to one on PATH for attached clusters."""
        cached = self.bin_dir / "kubectl"
        if os.access(cached, os.X_OK):
            return cached
        found = shutil.which("kubectl")
        return Path(found) if found else cached

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float | None = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane; raises KubectlError (with stderr) if check fails."""
        cmd = [str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def get_json(self, *args: str, namespace: str | None = None) -> Any:
        """``kubectl get ARGS -o json``, parsed (a List for collections, the object otherwise)."""
        ns = ["--namespace", namespace] if namespace else []
        return json.loads(self.kubectl("get", *args, *ns, "-o", "json").stdout)

    @property
    def audit_log(self) -> Path | None:
        """The API server's audit log (None for an attached cluster this module did not start)."""
        return self.state_dir / AUDIT_LOG if self.state_dir is not None else None

    def env(self) -> dict[str, str]:
        """Environment for child processes (operator, helm) that should use this cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}


def attach(kubeconfig: Path) -> ControlPlane:
    """A ControlPlane handle for an existing cluster given only its kubeconfig.

    Kubeconfigs written by ``up`` carry an extension with the state dir and CIDRs, so a cluster
    started by the demo is described exactly; any other cluster gets the defaults.
    """
    data = yaml.safe_load(kubeconfig.read_text())
    contexts = {c["name"]: c["context"] for c in data.get("contexts", [])}
    fallback: dict[str, Any] = next(iter(contexts.values()), {})
    current: dict[str, Any] = contexts.get(data.get("current-context", "")) or fallback
    clusters = {c["name"]: c["cluster"] for c in data.get("clusters", [])}
    fallback_cluster: dict[str, Any] = next(iter(clusters.values()), {})
    cluster: dict[str, Any] = clusters.get(current.get("cluster", "")) or fallback_cluster
    ext: dict[str, Any] = {}
    for item in cluster.get("extensions", []) or []:
        if item.get("name") == KUBECONFIG_EXTENSION:
            ext = item.get("extension") or {}
    return ControlPlane(
        kubeconfig=kubeconfig.absolute(),
        server=str(cluster.get("server", "")),
        bin_dir=default_bin_dir(),
        state_dir=Path(ext["state-dir"]) if ext.get("state-dir") else None,
        pod_cidr=str(ext.get("pod-cidr", POD_CIDR)),
        service_cidr=str(ext.get("service-cidr", SERVICE_CIDR)),
        node_names=tuple(ext.get("nodes", ())),
    )

