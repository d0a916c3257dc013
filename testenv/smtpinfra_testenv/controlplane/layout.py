"""Where things are: binaries, state dirs, the Kubernetes version; constants and errors of the control plane."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)
PKG_DIR = Path(__file__).resolve().parents[1]
"""smtpinfra_testenv/ (this package is one level below it)."""
BUILD_SCRIPT = PKG_DIR.parent / "build-controlplane.sh"
KWOK_STAGES = PKG_DIR / "kwok-stages.yaml"

#: Pod IPs are handed out from a loopback range: every 127.x.y.z address is local on Linux, so a
#: local pod runner can bind the real process of a pod to its pod IP. The API server accepts
#: loopback pod IPs in pod status but refuses them in Endpoints/EndpointSlices, so Services get no
#: endpoints (the endpoint controllers do not run: they could only fail); connect to pod IPs
#: directly. ``$SMTP_INFRA_POD_CIDR`` overrides it for a new state dir.
POD_CIDR = "127.65.0.0/16"
#: Only an allocation range for ClusterIPs; no traffic is ever sent there.
SERVICE_CIDR = "10.96.0.0/16"
#: The address kwok reports for its simulated nodes (and for hostNetwork pods).
NODE_IP = "127.0.0.1"
#: Annotation that makes kwok manage a Node (it watches only nodes matching this selector, so a
#: real kubelet's nodes, were there any, are left alone).
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
NODE_NAME_PREFIX = "kwok-node-"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
#: Optional component started by ``up(run_pods=True)``: the local pod runner (podrunner.py), which
#: really runs pods of our images; recorded in state.json like the others so ``down`` stops it.
POD_RUNNER = "pod-runner"
REQUIRED_BINARIES = (*COMPONENTS, "kubectl")
ALL_BINARIES = (*REQUIRED_BINARIES, "helm")
# Ports each component listens on; the first one is reported by ``status``.
PORTS: dict[str, tuple[str, ...]] = {
    "etcd": ("etcd-client", "etcd-peer"),
    "kube-apiserver": ("kube-apiserver",),
    "kube-controller-manager": ("kube-controller-manager",),
    "kube-scheduler": ("kube-scheduler",),
    "kwok": ("kwok",),
}
STATE_VERSION = 1
# Everything up creates in a state dir (down --purge refuses to delete anything else).
STATE_ENTRIES = frozenset(
    {".lock", "state.json", "kubeconfig", "kubeconfigs", "pki", "etcd", "logs", "kwok-home", "kwok-stages.yaml",
     "audit-policy.yaml", POD_RUNNER, *COMPONENTS}
)
KUBECONFIG_EXTENSION = "smtp-infra-testenv"


_T = TypeVar("_T")


class ControlPlaneError(RuntimeError):
    """The control plane could not be started or reached."""


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call whose message includes kubectl's stderr (the part worth reading)."""

    def __str__(self) -> str:
        stderr = (self.stderr or "").strip()
        return f"{super().__str__()}\n{stderr}" if stderr else super().__str__()


def cache_root() -> Path:
    """Root of the binary cache, shared with build-controlplane.sh (``$SMTP_INFRA_CACHE``)."""
    env = os.environ.get("SMTP_INFRA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "smtp-infra"


def k8s_version() -> str:
    """The Kubernetes version: the k8s.io/kubernetes requirement of the Go wrapper module.

    ``testenv/go/kubernetes/go.mod`` is the one place the version is defined; the build script
    reads it from there too.
    """
    go_mod = BUILD_SCRIPT.parent / "go" / "kubernetes" / "go.mod"
    match = re.search(r"^require k8s\.io/kubernetes (v\S+)$", go_mod.read_text(), re.MULTILINE)
    if not match:
        raise ControlPlaneError(f"no k8s.io/kubernetes requirement in {go_mod}")
    return match.group(1)


def default_bin_dir() -> Path:
    return cache_root() / f"controlplane-{k8s_version()}" / "bin"


def default_state_dir() -> Path:
    """``$SMTP_INFRA_STATE``, else a per-user cache directory (outside the repository)."""
    env = os.environ.get("SMTP_INFRA_STATE")
    return Path(env) if env else Path.home() / ".cache" / "smtp-infra" / "testenv"


def resolve_state_dir(state_dir: Path | None) -> Path:
    return (state_dir if state_dir is not None else default_state_dir()).expanduser().absolute()


@contextlib.contextmanager
def flock(path: Path) -> Iterator[None]:
    """Serialize up/down (and builds) on one state dir across processes (tests, CLI, demo)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def missing_binaries(bin_dir: Path, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if not os.access(bin_dir / n, os.X_OK)]


def ensure_binaries() -> Path:
    """Return the cached binary directory, running the build script first if anything is missing.

    The script only builds what is missing, so this is free when the cache is warm. A cold build
    compiles Kubernetes from source and takes many minutes.
    """
    bin_dir = default_bin_dir()
    if not missing_binaries(bin_dir, ALL_BINARIES):
        return bin_dir
    if not BUILD_SCRIPT.exists():
        raise ControlPlaneError(
            f"control-plane binaries missing in {bin_dir} ({', '.join(missing_binaries(bin_dir, ALL_BINARIES))}) "
            f"and the build script {BUILD_SCRIPT} is not available"
        )
    root = cache_root()
    with flock(root / ".build.lock"):
        if missing_binaries(bin_dir, ALL_BINARIES):
            log.warning("building control-plane binaries into %s (slow the first time)", bin_dir)
            env = {**os.environ, "SMTP_INFRA_CACHE": str(root)}
            proc = subprocess.run(
                ["bash", str(BUILD_SCRIPT), str(root)], env=env, stdout=subprocess.DEVNULL, check=False
            )
            if proc.returncode != 0 and missing_binaries(bin_dir, REQUIRED_BINARIES):
                raise ControlPlaneError(f"{BUILD_SCRIPT} failed with exit status {proc.returncode}")
    missing = missing_binaries(bin_dir, REQUIRED_BINARIES)
    if missing:
        raise ControlPlaneError(f"still missing after build: {', '.join(missing)} in {bin_dir}")
    return bin_dir


def wait_until(predicate: Callable[[], _T | None], *, timeout: float, message: str, interval: float = 0.2) -> _T:
    """Poll ``predicate`` until it returns something truthy and return that.

    Controllers are asynchronous, so tests assert "eventually" with a bounded timeout; the
    message says what did not happen, which is what one wants to read in a failed test.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s: {message}")
        time.sleep(interval)



