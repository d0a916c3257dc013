"""Helpers and fixtures for tests that talk to the local control plane."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from smtpinfra_testenv.controlplane import k8s_version

ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = ROOT / "crds"
EXAMPLES = ROOT / "examples"


def apply(cp: Any, manifest: dict[str, Any] | str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`kubectl apply` a manifest (dict or YAML text) with strict server-side field validation."""
    text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
    result: subprocess.CompletedProcess[str] = cp.kubectl("apply", "--validate=strict", "-f", "-", *args,
                                                          input=text, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl apply failed: {result.stderr}")
    return result


def get(cp: Any, resource: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    """The object as JSON; fails the test when it does not exist."""
    found = find(cp, resource, name, namespace)
    assert found is not None, f"{resource}/{name} not found"
    return found


def find(cp: Any, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    """The object as JSON, or None when it does not exist."""
    args = ["get", resource, name, "-o", "json"]
    if namespace:
        args += ["-n", namespace]
    result = cp.kubectl(*args, check=False)
    if result.returncode != 0:
        if "NotFound" in result.stderr:
            return None
        raise AssertionError(result.stderr)
    return json.loads(result.stdout)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2, what: str = "") -> Any:
    """Poll until predicate returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (AssertionError, subprocess.CalledProcessError, KeyError) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or predicate}: last={last!r}")


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return c
    return None


@pytest.fixture(scope="session")
def crds(control_plane: Any) -> Any:
    """The CRDs from crds/ installed and Established."""
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    plurals = [p.stem.split("_", 1)[1] for p in sorted(CRD_DIR.glob("*.yaml"))]
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          *[f"crd/{plural}.smtpinfra.com" for plural in plurals])
    # Established is not yet served: discovery and the published OpenAPI (kubectl explain) follow a moment later.
    def served(plural: str) -> bool:
        return bool(control_plane.kubectl("explain", f"{plural}.spec", check=False).returncode == 0)

    for plural in plurals:
        wait_for(functools.partial(served, plural), timeout=60, interval=0.5,
                 what=f"{plural} in discovery and OpenAPI")
    return control_plane


class OperatorProcess:
    """`smtp-infra operator run` as a child process with its log in a file."""

    def __init__(self, cp: Any, log_path: Path, env: dict[str, str] | None = None,
                 kubeconfig: Path | None = None) -> None:
        self.cp = cp
        self.log_path = log_path
        self.kubeconfig = kubeconfig or Path(cp.kubeconfig)
        # No metrics endpoint: it listens on every address, and the local pod runner's MTAs (processes
        # in this network namespace) serve their own HTTP port 8080 on their pod addresses.
        self.env = {**os.environ, "SMTP_INFRA_RESYNC_SECONDS": "2", "SMTP_INFRA_METRICS_PORT": "0", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.start_with_kubeconfig(self.kubeconfig)

    def start_with_kubeconfig(self, kubeconfig: Path) -> None:
        """Start with given credentials (e.g. a ServiceAccount token instead of cluster-admin)."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "smtpinfra_cli", "operator", "run", "--kubeconfig", str(kubeconfig)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
        )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


CHART = ROOT / "charts" / "smtp-infra"
#: The version charts are rendered for: the control plane's (defined once, in testenv/go/kubernetes/go.mod).
KUBE_VERSION = k8s_version().removeprefix("v")
OPERATOR_NAMESPACE = "smtp-infra-system"
OPERATOR_ACCOUNT = "smtp-infra"


def helm(cp: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The cached helm binary with its state kept out of the repository and $HOME."""
    home = Path(tempfile.gettempdir()) / "smtp-infra-helm"
    env = {**cp.env(), "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}
    result = subprocess.run([str(cp.bin_dir / "helm"), *args], capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def operator_kubeconfig(cp: Any, path: Path, *values: str) -> Path:
    """Credentials of the chart's ServiceAccount, bound to exactly the chart's ClusterRole.

    The operator in tests runs with these, not as cluster-admin, so a permission the chart
    lacks fails the tests. ``values`` are chart values (``key=value``) the role is rendered with.
    """
    sets = [arg for value in values for arg in ("--set", value)]
    rendered = helm(cp, "template", OPERATOR_ACCOUNT, str(CHART), "--namespace", OPERATOR_NAMESPACE,
                    "--kube-version", KUBE_VERSION, *sets, "--show-only", "templates/serviceaccount.yaml",
                    "--show-only", "templates/rbac.yaml").stdout
    cp.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    cp.kubectl("apply", "-n", OPERATOR_NAMESPACE, "-f", "-", input=rendered)
    token = cp.kubectl("create", "token", OPERATOR_ACCOUNT, "-n", OPERATOR_NAMESPACE, "--duration=6h").stdout.strip()
    admin = yaml.safe_load(Path(cp.kubeconfig).read_text())
    cluster = admin["clusters"][0]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": cluster["name"], "user": "operator"}}],
        "current-context": "operator",
    }))
    return path


@contextlib.contextmanager
def running_operator(crds: Any, directory: Path, env: dict[str, str] | None = None) -> Iterator[OperatorProcess]:
    """An operator process with the chart's RBAC (not cluster-admin), stopped afterwards; its log's tail
    is printed when it did not stop cleanly."""
    proc = OperatorProcess(crds, directory / "operator.log", env=env,
                           kubeconfig=operator_kubeconfig(crds, directory / "kubeconfig"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        if proc.process and proc.process.returncode not in (0, -15):
            print(proc.log()[-5000:])


@pytest.fixture(scope="module")
def operator(crds: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """A running operator for the tests of one module."""
    with running_operator(crds, tmp_path_factory.mktemp("operator")) as proc:
        yield proc
