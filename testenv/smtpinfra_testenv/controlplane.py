"""A real, local Kubernetes control plane for the tests and the demo.

There is no Docker and no cluster on the machines this project is developed on, so ``up`` runs
the genuine components as plain processes on loopback: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok (which plays the kubelet for simulated nodes so
pods get scheduled and become Running). The binaries are built once from pinned Go modules by
``testenv/build-controlplane.sh`` into a cache outside the repository; starting them takes seconds.

Everything a control plane needs to be found again (ports, pids, certificates, etcd data,
kubeconfigs, logs) lives in one state directory, so ``down``/``status`` work from another process
and a second ``up`` resumes the same cluster with its data.

Pod IPs are loopback addresses (``POD_CIDR``, 127.65.0.0/16), checked against v1.36.3: the API
server accepts them in pod status (kwok writes them, pods go Running), but Endpoints and
EndpointSlices refuse every 127.0.0.0/8 address ("may not be in the loopback range"), so a
Service selecting such pods gets no endpoints: kube-controller-manager runs without its endpoint
controllers, which could only fail and retry. Clients connect to pod IPs directly. For the same
reason the API server runs with ``--endpoint-reconciler-type=none`` (its own address is 127.0.0.1).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import ipaddress
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from smtpinfra_testenv import pki as pkimod

log = logging.getLogger(__name__)

_PKG_DIR = Path(__file__).resolve().parent
BUILD_SCRIPT = _PKG_DIR.parent / "build-controlplane.sh"
KWOK_STAGES = _PKG_DIR / "kwok-stages.yaml"

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
_PORTS: dict[str, tuple[str, ...]] = {
    "etcd": ("etcd-client", "etcd-peer"),
    "kube-apiserver": ("kube-apiserver",),
    "kube-controller-manager": ("kube-controller-manager",),
    "kube-scheduler": ("kube-scheduler",),
    "kwok": ("kwok",),
}
_STATE_VERSION = 1
# Everything up creates in a state dir (down --purge refuses to delete anything else).
_STATE_ENTRIES = frozenset(
    {".lock", "state.json", "kubeconfig", "kubeconfigs", "pki", "etcd", "logs", "kwok-home", "kwok-stages.yaml",
     "audit-policy.yaml", POD_RUNNER, *COMPONENTS}
)
_KUBECONFIG_EXTENSION = "smtp-infra-testenv"


_T = TypeVar("_T")


class ControlPlaneError(RuntimeError):
    """The control plane could not be started or reached."""


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call whose message includes kubectl's stderr (the part worth reading)."""

    def __str__(self) -> str:
        stderr = (self.stderr or "").strip()
        return f"{super().__str__()}\n{stderr}" if stderr else super().__str__()


# --------------------------------------------------------------------------------------------
# Locations


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


def _resolve_state_dir(state_dir: Path | None) -> Path:
    return (state_dir if state_dir is not None else default_state_dir()).expanduser().absolute()


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    """Serialize up/down (and builds) on one state dir across processes (tests, CLI, demo)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _missing(bin_dir: Path, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if not os.access(bin_dir / n, os.X_OK)]


def ensure_binaries() -> Path:
    """Return the cached binary directory, running the build script first if anything is missing.

    The script only builds what is missing, so this is free when the cache is warm. A cold build
    compiles Kubernetes from source and takes many minutes.
    """
    bin_dir = default_bin_dir()
    if not _missing(bin_dir, ALL_BINARIES):
        return bin_dir
    if not BUILD_SCRIPT.exists():
        raise ControlPlaneError(
            f"control-plane binaries missing in {bin_dir} ({', '.join(_missing(bin_dir, ALL_BINARIES))}) "
            f"and the build script {BUILD_SCRIPT} is not available"
        )
    root = cache_root()
    with _flock(root / ".build.lock"):
        if _missing(bin_dir, ALL_BINARIES):
            log.warning("building control-plane binaries into %s (slow the first time)", bin_dir)
            env = {**os.environ, "SMTP_INFRA_CACHE": str(root)}
            proc = subprocess.run(
                ["bash", str(BUILD_SCRIPT), str(root)], env=env, stdout=subprocess.DEVNULL, check=False
            )
            if proc.returncode != 0 and _missing(bin_dir, REQUIRED_BINARIES):
                raise ControlPlaneError(f"{BUILD_SCRIPT} failed with exit status {proc.returncode}")
    missing = _missing(bin_dir, REQUIRED_BINARIES)
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


# --------------------------------------------------------------------------------------------
# The handle given to callers


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
        if item.get("name") == _KUBECONFIG_EXTENSION:
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


# --------------------------------------------------------------------------------------------
# State on disk


@dataclass
class _State:
    """The JSON record in the state dir (``state.json``)."""

    ports: dict[str, int]
    pids: dict[str, dict[str, int]] = field(default_factory=dict)
    pod_cidr: str = POD_CIDR
    service_cidr: str = SERVICE_CIDR
    nodes: int = 1

    @staticmethod
    def load(state_dir: Path) -> _State | None:
        path = state_dir / "state.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if raw.get("version") != _STATE_VERSION:
            return None
        return _State(
            ports={k: int(v) for k, v in raw["ports"].items()},
            pids={k: {"pid": int(v["pid"]), "start": int(v["start"])} for k, v in raw.get("pids", {}).items()},
            pod_cidr=str(raw.get("pod_cidr", POD_CIDR)),
            service_cidr=str(raw.get("service_cidr", SERVICE_CIDR)),
            nodes=int(raw.get("nodes", 1)),
        )

    def save(self, state_dir: Path) -> None:
        raw = {
            "version": _STATE_VERSION,
            "ports": self.ports,
            "pids": self.pids,
            "pod_cidr": self.pod_cidr,
            "service_cidr": self.service_cidr,
            "nodes": self.nodes,
        }
        tmp = state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
        tmp.replace(state_dir / "state.json")


# --------------------------------------------------------------------------------------------
# Processes


def _proc_start_time(pid: int) -> int | None:
    """Kernel start time of a live (non-zombie) process, used to tell our pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # exited; only the zombie entry is left
        return None
    return int(fields[19])


def _alive(record: dict[str, int] | None) -> bool:
    """True when the recorded process still runs (same pid *and* same start time)."""
    return record is not None and _proc_start_time(record["pid"]) == record["start"]


def _spawn(argv: list[str], log_file: Path, env: dict[str, str]) -> dict[str, int]:
    """Start ``argv`` fully detached and return its pid record.

    The component is started by a throwaway ``sh`` in a new session, so it is re-parented away
    from us: it survives the CLI exiting, never becomes our zombie, and no Popen object is left
    running.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as fh:
        fh.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n")
    script = 'log=$1; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!'
    out = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(log_file), *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,
        check=True,
    )
    pid = int(out.stdout.strip())
    start = None
    for _ in range(100):
        start = _proc_start_time(pid)
        if start is not None:
            break
        time.sleep(0.01)
    if start is None:
        raise ControlPlaneError(f"{argv[0]} exited immediately:\n{_tail(log_file)}")
    return {"pid": pid, "start": start}


def _terminate(records: dict[str, dict[str, int]], names: list[str], grace: float) -> None:
    """SIGTERM the named processes one by one (in the given order), then SIGKILL leftovers."""
    for name in names:
        rec = records.get(name)
        if not rec or not _alive(rec):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec["pid"], signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _alive(rec) and time.monotonic() < deadline:
            time.sleep(0.05)
    for name in names:
        rec = records.get(name)
        if rec and _alive(rec):
            log.warning("%s (pid %d) ignored SIGTERM; killing it", name, rec["pid"])
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec["pid"], signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _alive(rec) and time.monotonic() < deadline:
                time.sleep(0.05)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------------------------
# Ports


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option the Go servers use, so a TIME_WAIT leftover does not count as "busy".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(names: list[str], keep: dict[str, int]) -> dict[str, int]:
    """Keep the previous ports when still free (stable kubeconfigs), else pick new free ones.

    New ports come from below the kernel's ephemeral range so an outgoing connection cannot
    occupy one of them while the control plane is down.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    taken: set[int] = set()
    result: dict[str, int] = {}
    for name in names:
        port = keep.get(name)
        if port is None or port in taken or not _port_free(port):
            for _ in range(1000):
                port = random.randint(min(20000, low - 1000), low - 1)
                if port not in taken and _port_free(port):
                    break
            else:
                raise ControlPlaneError("no free loopback port found")
        taken.add(port)
        result[name] = port
    return result


# --------------------------------------------------------------------------------------------
# HTTP against the components (stdlib only: cheaper than spawning kubectl in wait loops)


@dataclass(frozen=True)
class _Api:
    """A tiny admin client for the API server, used for health checks and bootstrapping."""

    server: str
    ctx: ssl.SSLContext

    @staticmethod
    def for_pki(server: str, pki: pkimod.Pki) -> _Api:
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        ctx.load_cert_chain(str(pki.client_cert(pkimod.ADMIN)), str(pki.client_key(pkimod.ADMIN)))
        return _Api(server, ctx)

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 5.0
    ) -> tuple[int, dict[str, Any] | str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _open(req, self.ctx, timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        text = raw.decode(errors="replace")
        try:
            parsed = json.loads(text)
        except ValueError:
            return status, text
        return status, parsed if isinstance(parsed, dict) else text

    def ok(self, path: str) -> bool:
        try:
            status, _ = self.request("GET", path, timeout=2.0)
        except (OSError, ssl.SSLError):
            return False
        return status == 200


def _open(req: urllib.request.Request, ctx: ssl.SSLContext | None, timeout: float) -> Any:
    """Open ``req`` ignoring proxy settings from the environment: all our traffic is loopback."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ctx is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    return urllib.request.build_opener(*handlers).open(req, timeout=timeout)


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    """GET a health endpoint; self-signed serving certs of KCM/scheduler are not verified."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with _open(urllib.request.Request(url), ctx, timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


def _health_url(name: str, ports: dict[str, int]) -> str:
    port = ports[_PORTS[name][0]]
    return {
        "etcd": f"http://127.0.0.1:{port}/health",
        "kube-apiserver": f"https://127.0.0.1:{port}/readyz",
        "kube-controller-manager": f"https://127.0.0.1:{port}/healthz",
        "kube-scheduler": f"https://127.0.0.1:{port}/healthz",
        "kwok": f"http://127.0.0.1:{port}/healthz",
    }[name]


# --------------------------------------------------------------------------------------------
# Configuration files


def _kubeconfig(server: str, pki: pkimod.Pki, who: pkimod.ClientIdentity, ext: dict[str, Any] | None = None) -> str:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    cluster: dict[str, Any] = {"server": server, "certificate-authority-data": b64(pki.ca_cert)}
    if ext:
        cluster["extensions"] = [{"name": _KUBECONFIG_EXTENSION, "extension": ext}]
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "smtp-infra-testenv", "cluster": cluster}],
        "users": [
            {
                "name": who.common_name,
                "user": {
                    "client-certificate-data": b64(pki.client_cert(who)),
                    "client-key-data": b64(pki.client_key(who)),
                },
            }
        ],
        "contexts": [
            {
                "name": "smtp-infra-testenv",
                "context": {"cluster": "smtp-infra-testenv", "user": who.common_name, "namespace": "default"},
            }
        ],
        "current-context": "smtp-infra-testenv",
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def _first_service_ip(service_cidr: str) -> str:
    return str(ipaddress.ip_network(service_cidr)[1])


def _kwok_stages(sd: Path) -> Path:
    """kwok's stages with the local pod runner's image prefixes excluded (``$SMTP_INFRA_LOCAL_IMAGES``).

    The shipped file skips ``smtp-infra/`` images; other prefixes are written into the state dir.
    """
    from smtpinfra_testenv import podrunner

    prefixes = podrunner.image_prefixes_from_env()
    if prefixes == podrunner.DEFAULT_IMAGE_PREFIXES:
        return KWOK_STAGES
    default = f"'{podrunner.kwok_image_expression(podrunner.DEFAULT_IMAGE_PREFIXES)}'"
    text = KWOK_STAGES.read_text().replace(default, json.dumps(podrunner.kwok_image_expression(prefixes)))
    _write(sd / "kwok-stages.yaml", text, 0o644)
    return sd / "kwok-stages.yaml"


AUDIT_LOG = Path("logs") / "audit.log"
"""The API server's audit log in the state dir: one JSON line per request (Metadata level), with
the client's user agent, so tests and benches count the requests a component made."""
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        # Node heartbeats and health probes: many, and nobody's requests worth counting.
        {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]},
        {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*", "/version"]},
        {"level": "Metadata"},
    ],
}


def _audit_policy(sd: Path) -> Path:
    path = sd / "audit-policy.yaml"
    _write(path, yaml.safe_dump(AUDIT_POLICY), 0o644)
    return path


def _command_lines(sd: Path, bin_dir: Path, st: _State, pki: pkimod.Pki) -> dict[str, list[str]]:
    """The exact flags of every component (the one place to read how the cluster is configured)."""
    p = st.ports
    kc = sd / "kubeconfigs"
    b = {name: str(bin_dir / name) for name in COMPONENTS}
    etcd_client = f"http://127.0.0.1:{p['etcd-client']}"
    etcd_peer = f"http://127.0.0.1:{p['etcd-peer']}"
    kcm_kc = str(kc / "kube-controller-manager.kubeconfig")
    sched_kc = str(kc / "kube-scheduler.kubeconfig")
    key, sel = KWOK_NODE_ANNOTATION
    return {
        "etcd": [
            b["etcd"],
            "--name=testenv",
            f"--data-dir={sd / 'etcd'}",
            f"--listen-client-urls={etcd_client}",
            f"--advertise-client-urls={etcd_client}",
            f"--listen-peer-urls={etcd_peer}",
            f"--initial-advertise-peer-urls={etcd_peer}",
            f"--initial-cluster=testenv={etcd_peer}",
            "--initial-cluster-state=new",
            # A throwaway test cluster: skipping fsync makes every API write several times faster.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ],
        "kube-apiserver": [
            b["kube-apiserver"],
            f"--etcd-servers={etcd_client}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['kube-apiserver']}",
            "--advertise-address=127.0.0.1",
            # The kubernetes Service would get 127.0.0.1 as endpoint, which Endpoints validation
            # refuses (loopback); nothing in-cluster needs it, so do not reconcile it at all.
            "--endpoint-reconciler-type=none",
            f"--cert-dir={sd / 'kube-apiserver'}",
            f"--tls-cert-file={pki.apiserver_cert}",
            f"--tls-private-key-file={pki.apiserver_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
            f"--requestheader-allowed-names={pkimod.FRONT_PROXY_CLIENT.common_name}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.client_cert(pkimod.FRONT_PROXY_CLIENT)}",
            f"--proxy-client-key-file={pki.client_key(pkimod.FRONT_PROXY_CLIENT)}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            f"--service-cluster-ip-range={st.service_cidr}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--profiling=false",
            f"--audit-policy-file={_audit_policy(sd)}",
            f"--audit-log-path={sd / AUDIT_LOG}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
            "--audit-log-maxsize=200",
            "--audit-log-maxbackup=1",
        ],
        "kube-controller-manager": [
            b["kube-controller-manager"],
            f"--kubeconfig={kcm_kc}",
            f"--authentication-kubeconfig={kcm_kc}",
            f"--authorization-kubeconfig={kcm_kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['kube-controller-manager']}",
            f"--cert-dir={sd / 'kube-controller-manager'}",
            "--use-service-account-credentials=true",
            f"--root-ca-file={pki.ca_cert}",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            f"--service-cluster-ip-range={st.service_cidr}",
            "--leader-elect=false",
            # Pod IPs come from kwok's --cidr, not from per-node podCIDRs. Those are loopback
            # addresses, which Endpoints and EndpointSlices refuse: the endpoint controllers could
            # only fail and retry (with 200 Services, ~3,500 failed writes and ~4,900 Event writes
            # a minute, most of the API server's load), so they do not run here.
            "--controllers=*,-node-ipam-controller,-endpoints-controller,-endpointslice-controller",
            "--allocate-node-cidrs=false",
            # The default client rate limit (20 qps) alone adds seconds to startup, when every
            # controller fetches its service-account token; nothing else competes for this API.
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--profiling=false",
        ],
        "kube-scheduler": [
            b["kube-scheduler"],
            f"--kubeconfig={sched_kc}",
            f"--authentication-kubeconfig={sched_kc}",
            f"--authorization-kubeconfig={sched_kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['kube-scheduler']}",
            f"--cert-dir={sd / 'kube-scheduler'}",
            "--leader-elect=false",
            "--profiling=false",
        ],
        "kwok": [
            b["kwok"],
            f"--kubeconfig={kc / 'kwok.kubeconfig'}",
            f"--config={_kwok_stages(sd)}",
            f"--manage-nodes-with-annotation-selector={key}={sel}",
            f"--cidr={st.pod_cidr}",
            f"--node-ip={NODE_IP}",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{p['kwok']}",
        ],
    }


def _component_env(sd: Path, name: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KUBECONFIG", None)
    # Loopback must never go through a proxy configured for the registries.
    env["NO_PROXY"] = env["no_proxy"] = ",".join(x for x in (env.get("NO_PROXY", ""), "127.0.0.0/8,localhost") if x)
    if name == "kwok":
        # kwok silently merges ~/.kwok/kwok.yaml into its config; give it an empty home instead.
        home = sd / "kwok-home"
        home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(home)
    return env


# --------------------------------------------------------------------------------------------
# Waiting


def _wait(what: str, check: Callable[[], bool], deadline: float, sd: Path, watch: dict[str, dict[str, int]]) -> None:
    """Poll ``check`` until it holds; fail fast (with the log tail) if a watched component died."""
    delay = 0.05
    while True:
        if check():
            return
        for name, rec in watch.items():
            if not _alive(rec):
                raise ControlPlaneError(
                    f"{name} exited while waiting for {what}; last log lines "
                    f"({sd / 'logs' / (name + '.log')}):\n{_tail(sd / 'logs' / (name + '.log'))}"
                )
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {n}:\n{_tail(sd / 'logs' / (n + '.log'), 10)}" for n in watch)
            raise ControlPlaneError(f"timed out waiting for {what}\n{tails}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def _node_body(name: str) -> dict[str, Any]:
    key, value = KWOK_NODE_ANNOTATION
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
            },
        },
    }


def _node_ready(api: _Api, name: str) -> bool:
    """Ready, and the lifecycle controller has lifted the not-ready taint (pods can schedule)."""
    try:
        status, node = api.request("GET", f"/api/v1/nodes/{name}", timeout=2.0)
    except OSError:
        return False
    if status != 200 or not isinstance(node, dict):
        return False
    conditions = node.get("status", {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = node.get("spec", {}).get("taints") or []
    blocking = [t for t in taints if t.get("effect") in ("NoSchedule", "NoExecute")]
    return ready and not blocking


# --------------------------------------------------------------------------------------------
# Public operations


def _handle(sd: Path, bin_dir: Path, st: _State) -> ControlPlane:
    return ControlPlane(
        kubeconfig=sd / "kubeconfig",
        server=f"https://127.0.0.1:{st.ports['kube-apiserver']}",
        bin_dir=bin_dir,
        state_dir=sd,
        pod_cidr=st.pod_cidr,
        service_cidr=st.service_cidr,
        node_names=tuple(f"{NODE_NAME_PREFIX}{i}" for i in range(st.nodes)),
    )


def _write_kubeconfigs(sd: Path, st: _State, pki: pkimod.Pki) -> str:
    """Write the admin kubeconfig (with our extension, for ``attach``) and the components' ones."""
    server = f"https://127.0.0.1:{st.ports['kube-apiserver']}"
    ext = {
        "state-dir": str(sd),
        "pod-cidr": st.pod_cidr,
        "service-cidr": st.service_cidr,
        "nodes": [f"{NODE_NAME_PREFIX}{i}" for i in range(st.nodes)],
    }
    _write(sd / "kubeconfig", _kubeconfig(server, pki, pkimod.ADMIN, ext))
    for who in (pkimod.CONTROLLER_MANAGER, pkimod.SCHEDULER, pkimod.KWOK):
        _write(sd / "kubeconfigs" / f"{who.stem}.kubeconfig", _kubeconfig(server, pki, who))
    return server


def up(
    state_dir: Path | None = None, *, nodes: int = 1, timeout: float = 180.0, run_pods: bool = False
) -> ControlPlane:
    """Start (or find already running) the control plane of ``state_dir`` and wait until usable.

    Usable means: /readyz is ok, every simulated node is Ready without NoSchedule taints, and the
    ``default`` ServiceAccount exists (pods are rejected until it does). Idempotent: a healthy
    running control plane is returned as is; a partly running one is restarted as a whole with
    its existing data. ``nodes`` only ever adds simulated nodes. ``run_pods`` also starts the local
    pod runner (detached, logs in ``logs/pod-runner.log``, state in ``pod-runner/``) unless it runs.
    """
    sd = _resolve_state_dir(state_dir)
    bin_dir = ensure_binaries()
    sd.mkdir(parents=True, exist_ok=True)
    with _flock(sd / ".lock"):
        t0 = time.monotonic()
        st = _State.load(sd)
        grew = st is not None and nodes > st.nodes
        if st is not None:
            st.nodes = max(st.nodes, nodes)
        pki = pkimod.Pki(sd / "pki")
        running = st is not None and all(_alive(st.pids.get(n)) for n in COMPONENTS)
        if st is not None and running and (sd / "kubeconfig").exists():
            api = _Api.for_pki(f"https://127.0.0.1:{st.ports['kube-apiserver']}", pki)
            if api.ok("/readyz"):
                if grew:
                    _write_kubeconfigs(sd, st, pki)
                _finish(sd, st, api, time.monotonic() + timeout)
                if run_pods:
                    _start_pod_runner(sd, st)
                st.save(sd)
                log.info("control plane in %s already running", sd)
                return _handle(sd, bin_dir, st)
        # A pod runner that outlived a dead component is restarted with the rest: left running, it
        # would hold its state dir's lock against the new one (and talk to the old API server).
        had_runner = st is not None and _alive(st.pids.get(POD_RUNNER))
        if st is not None:
            _terminate(st.pids, [POD_RUNNER], grace=70.0)
            _terminate(st.pids, list(reversed(COMPONENTS)), grace=10.0)
            st.pids.clear()
        else:
            # The pod CIDR is fixed when the state is created (pods keep their IPs across restarts).
            pod_cidr = os.environ.get("SMTP_INFRA_POD_CIDR", POD_CIDR)
            ipaddress.IPv4Network(pod_cidr)  # fail early on a typo, not inside kwok
            st = _State(ports={}, nodes=nodes, pod_cidr=pod_cidr)
        st.ports = _pick_ports([p for n in COMPONENTS for p in _PORTS[n]], st.ports)
        pki = pkimod.ensure_pki(sd / "pki", _first_service_ip(st.service_cidr))
        server = _write_kubeconfigs(sd, st, pki)
        st.save(sd)
        cmds = _command_lines(sd, bin_dir, st, pki)
        api = _Api.for_pki(server, pki)
        deadline = time.monotonic() + timeout
        phases: list[str] = []
        mark = time.monotonic()

        def phase(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            phases.append(f"{name} {now - mark:.1f}s")
            mark = now

        phase("prepare")
        try:
            _start(sd, st, cmds, ["etcd"], deadline)
            phase("etcd")
            _start(sd, st, cmds, ["kube-apiserver"], deadline, api_check=api)
            phase("kube-apiserver")
            _start(sd, st, cmds, ["kube-controller-manager", "kube-scheduler", "kwok"], deadline)
            phase("controllers")
            _finish(sd, st, api, deadline)
            phase("nodes+serviceaccount")
            if run_pods or had_runner:
                _start_pod_runner(sd, st)
                phase("pod-runner")
        except BaseException:
            _terminate(st.pids, [POD_RUNNER, *reversed(COMPONENTS)], grace=5.0)
            st.pids.clear()
            st.save(sd)
            raise
        st.save(sd)
        log.info("control plane in %s up after %.1fs (%s)", sd, time.monotonic() - t0, ", ".join(phases))
        return _handle(sd, bin_dir, st)


def _start(
    sd: Path,
    st: _State,
    cmds: dict[str, list[str]],
    names: list[str],
    deadline: float,
    api_check: _Api | None = None,
) -> None:
    """Start ``names`` together and wait for all of their health endpoints."""
    for name in names:
        st.pids[name] = _spawn(cmds[name], sd / "logs" / f"{name}.log", _component_env(sd, name))
        st.save(sd)  # record pids at once so a crash of ours still lets `down` find them
    for name in names:
        if api_check is not None and name == "kube-apiserver":
            check: Callable[[], bool] = functools.partial(api_check.ok, "/readyz")
        else:
            check = functools.partial(_http_ok, _health_url(name, st.ports))
        _wait(f"{name} health", check, deadline, sd, {n: st.pids[n] for n in st.pids})


def _start_pod_runner(sd: Path, st: _State) -> None:
    """Start the local pod runner detached (``smtp-infra testenv run-pods``) unless it already runs.

    Its processes get this interpreter's bin directory first on PATH, so ``smtp-infra`` and
    ``python3`` in pod commands are the project's venv.
    """
    if _alive(st.pids.get(POD_RUNNER)):
        return
    argv = [sys.executable, "-m", "smtpinfra_testenv.cli", "run-pods", "--state-dir", str(sd)]
    env = _component_env(sd, POD_RUNNER)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "/usr/local/bin:/usr/bin:/bin")])
    ready = sd / POD_RUNNER / "ready"
    ready.unlink(missing_ok=True)
    st.pids[POD_RUNNER] = _spawn(argv, sd / "logs" / f"{POD_RUNNER}.log", env)
    st.save(sd)
    _wait("pod runner", ready.exists, time.monotonic() + 60, sd, {POD_RUNNER: st.pids[POD_RUNNER]})


def _finish(sd: Path, st: _State, api: _Api, deadline: float) -> None:
    """Create the simulated nodes and wait for what makes the cluster usable for pods."""
    names = [f"{NODE_NAME_PREFIX}{i}" for i in range(st.nodes)]
    for name in names:
        status, body = api.request("POST", "/api/v1/nodes", _node_body(name))
        if status not in (201, 409):
            raise ControlPlaneError(f"creating node {name} failed ({status}): {body}")
    watch = {n: st.pids[n] for n in COMPONENTS if n in st.pids}
    for name in names:
        _wait(f"node {name} Ready", functools.partial(_node_ready, api, name), deadline, sd, watch)
    _wait(
        "ServiceAccount default/default",
        functools.partial(api.ok, "/api/v1/namespaces/default/serviceaccounts/default"),
        deadline,
        sd,
        watch,
    )


def down(state_dir: Path | None = None, *, purge: bool = False, grace: float = 10.0) -> None:
    """Stop all components (reverse start order); with ``purge`` also delete the state dir.

    Only processes recorded in the state dir, with matching start times, are signalled, so a pid
    reused by an unrelated process is never touched. Without ``purge`` certificates and etcd data
    stay, and the next ``up`` resumes the same cluster.
    """
    sd = _resolve_state_dir(state_dir)
    if not sd.exists():
        return
    with _flock(sd / ".lock"):
        st = _State.load(sd)
        if st is not None:
            # The runner first (it SIGTERMs its pods' processes and waits for their grace periods).
            _terminate(st.pids, [POD_RUNNER], grace=max(grace, 70.0))
            _terminate(st.pids, list(reversed(COMPONENTS)), grace=grace)
            st.pids.clear()
            st.save(sd)
    if purge:
        unknown = sorted(p.name for p in sd.iterdir() if p.name.removesuffix(".tmp") not in _STATE_ENTRIES)
        if unknown:
            # Guard against `down --purge --state-dir ~`: only ever delete what up created.
            raise ControlPlaneError(f"not purging {sd}: it holds files up did not create: {unknown}")
        shutil.rmtree(sd, ignore_errors=True)


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
    sd = _resolve_state_dir(state_dir)
    st = _State.load(sd)
    if st is None:
        return Status(sd, None, None, False, ())
    comps = []
    for name in COMPONENTS:
        rec = st.pids.get(name)
        running = _alive(rec)
        port = st.ports.get(_PORTS[name][0])
        healthy = False
        if running and name != "kube-apiserver":
            healthy = _http_ok(_health_url(name, st.ports))
        comps.append(ComponentStatus(name, running, rec["pid"] if rec and running else None, port, healthy))
    server = f"https://127.0.0.1:{st.ports['kube-apiserver']}"
    api_healthy = False
    pki = pkimod.Pki(sd / "pki")
    if comps[1].running and pki.ca_cert.exists():
        api_healthy = _Api.for_pki(server, pki).ok("/readyz")
        comps[1] = ComponentStatus(comps[1].name, True, comps[1].pid, comps[1].port, api_healthy)
    kubeconfig = sd / "kubeconfig"
    return Status(sd, kubeconfig if kubeconfig.exists() else None, server, api_healthy, tuple(comps))
