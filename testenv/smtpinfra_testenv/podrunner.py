"""A minimal kubelet for pods of OUR images, so the pod spec the operator writes is what really runs.

kwok only pretends to run pods. For pods whose first container image starts with one of the
local image prefixes (default ``smtp-infra/``, ``$SMTP_INFRA_LOCAL_IMAGES`` overrides it; kwok's
stages skip exactly those pods), this runner does what a kubelet does, with local processes:

* gives the pod an IP from its own loopback CIDR (default 127.66.0.0/16; every 127.x.y.z is
  local on Linux), derived from namespace/name so a recreated StatefulSet pod gets the same one;
* materialises volumes under ``<state>/pods/<uid>/volumes``: configMap, secret, downwardAPI and
  projected (incl. a real TokenRequest service-account token) with the kubelet's ``..data``
  symlink-swap layout, resynced from watches within a second or two of a change; emptyDir; and
  persistentVolumeClaim/ephemeral as ``<state>/pvc/<namespace>/<claim>``, which survives the pod.
  Because nothing provisions volumes here and the scheduler refuses pods with unbound claims,
  the runner binds each claim of its pods to a ``hostPath`` PersistentVolume it creates
  (label ``smtp-infra.io/pod-runner``, reclaim policy Retain, deleted again once Released);
* builds the environment (env, envFrom, fieldRef, configMapKeyRef, secretKeyRef, ``$(VAR)``
  expansion exactly like the kubelet) and runs each container's command+args (or the image's
  known ENTRYPOINT/CMD, ``IMAGE_DEFAULTS``) inside a private mount+UTS namespace where every
  volume is bind-mounted at its ``mountPath`` (read-only remount for ``readOnly``), with the pod's
  hostname and an /etc/hosts naming the pod IP; stdout/stderr go to
  ``<state>/logs/<namespace>/<pod>/<container>.log``;
* reports status like the kubelet (podIP(s), hostIP, phase, containerStatuses, conditions) with
  Ready driven by the real readiness probe (httpGet, tcpSocket, exec), restarts on liveness
  failure and on crashes (restartPolicy, exponential backoff, restartCount);
* on deletion sends SIGTERM to the process group, waits up to the grace period, SIGKILLs, and
  deletes the pod object with gracePeriodSeconds=0 (the kubelet's final delete).

Deliberate simplifications: processes run as root in the host network namespace and see the
host's filesystem except where volumes are mounted (securityContext runAsUser/runAsNonRoot/
fsGroup/readOnlyRootFilesystem and resources are ignored; bind to ``$(POD_IP)``, not 0.0.0.0, or
pods collide on ports; missing mount points are created on the host, empty);
KUBERNETES_SERVICE_HOST/PORT point at the real API server address (the kubernetes Service's
ClusterIP is not routable here); no service-link env vars; init containers run in order, sidecar
(restartPolicy Always) init containers are treated as plain init containers; hostPath volumes are
bind-mounted as is; image changes of a running pod are not acted upon.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import queue
import random
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

Obj = dict[str, Any]

DEFAULT_IMAGE_PREFIXES = ("smtp-infra/",)
#: Comma-separated image prefixes of pods run locally (read by the runner and by ``up`` for kwok).
IMAGE_PREFIXES_ENV = "SMTP_INFRA_LOCAL_IMAGES"
DEFAULT_POD_CIDR = "127.66.0.0/16"
RUNNER_LABEL = "smtp-infra.io/pod-runner"
#: ENTRYPOINT and CMD of our images (from their Dockerfiles), used when a container sets no
#: command (and, for CMD, no args), exactly as a container runtime would.
IMAGE_DEFAULTS: dict[str, tuple[list[str], list[str]]] = {
    "smtp-infra/mta": (["smtp-infra", "mta"], ["serve", "--config", "/etc/smtp-infra/mta.yaml"]),
}
_KUBELET_DEFAULT_GRACE = 30
_TICK = 0.25


def image_prefixes_from_env() -> tuple[str, ...]:
    """The configured local image prefixes (``$SMTP_INFRA_LOCAL_IMAGES``), else the default."""
    raw = os.environ.get(IMAGE_PREFIXES_ENV, "")
    prefixes = tuple(p.strip() for p in raw.split(",") if p.strip())
    return prefixes or DEFAULT_IMAGE_PREFIXES


def is_local_pod(pod: Obj, prefixes: tuple[str, ...]) -> bool:
    """Whether the runner (not kwok) handles this pod: its FIRST container's image is ours."""
    containers = pod.get("spec", {}).get("containers") or []
    return bool(containers) and str(containers[0].get("image", "")).startswith(prefixes)


def kwok_image_expression(prefixes: tuple[str, ...]) -> str:
    """The gojq selector key that is true for pods of these images (used in kwok's stages)."""
    tests = " or ".join(f"startswith({json.dumps(p)})" for p in prefixes)
    return f".spec.containers.[0].image | ({tests})" if len(prefixes) > 1 else f".spec.containers.[0].image | {tests}"


# --------------------------------------------------------------------------------------------
# $(VAR) expansion, exactly like k8s.io/kubernetes/third_party/forked/golang/expansion


def expand(text: str, env: dict[str, str]) -> str:
    """Expand ``$(VAR)`` from ``env``; ``$$`` is an escaped ``$``; unknown references stay as is."""
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "$" and i + 1 < n:
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end == -1:
                    # Unterminated reference: the kubelet keeps the rest verbatim.
                    out.append(text[i:])
                    break
                name = text[i + 2 : end]
                out.append(env[name] if name in env else text[i : end + 1])
                i = end + 1
                continue
            out.append(ch + nxt)
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


# --------------------------------------------------------------------------------------------
# A small API client (stdlib only: the generated client is heavy and we need raw JSON + watch)


class ApiError(RuntimeError):
    """An API request answered with an error status."""

    def __init__(self, status: int, body: Any, what: str) -> None:
        detail = body.get("message", body) if isinstance(body, dict) else body
        super().__init__(f"{what}: HTTP {status}: {detail}")
        self.status = status
        self.body = body


class KubeClient:
    """Just enough of a Kubernetes client: JSON requests and line-delimited watches."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext | None, token: str | None, server: str) -> None:
        self.host = host
        self.port = port
        self.ctx = ctx
        self.token = token
        self.server = server
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_kubeconfig(cls, path: Path, cert_dir: Path) -> KubeClient:
        """Build from a kubeconfig (client certs/token, CA data or files); certs are spilled to files."""
        cfg = yaml.safe_load(path.read_text())
        contexts = {c["name"]: c["context"] for c in cfg.get("contexts") or []}
        ctx_def: Obj = contexts.get(cfg.get("current-context", "")) or next(iter(contexts.values()), {})
        clusters = {c["name"]: c["cluster"] for c in cfg.get("clusters") or []}
        users = {u["name"]: u.get("user") or {} for u in cfg.get("users") or []}
        cluster: Obj = clusters.get(ctx_def.get("cluster", "")) or next(iter(clusters.values()))
        user: Obj = users.get(ctx_def.get("user", "")) or {}
        server = str(cluster["server"])
        parsed = urllib.parse.urlsplit(server)
        cert_dir.mkdir(parents=True, exist_ok=True)
        ssl_ctx: ssl.SSLContext | None = None
        if parsed.scheme == "https":
            if cluster.get("insecure-skip-tls-verify"):
                ssl_ctx = ssl.create_default_context()
                ssl_ctx.check_hostname = False
                ssl_ctx.verify_mode = ssl.CERT_NONE
            elif cluster.get("certificate-authority-data"):
                ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
                ssl_ctx = ssl.create_default_context(cadata=ca)
            else:
                ssl_ctx = ssl.create_default_context(cafile=cluster.get("certificate-authority"))

            def spill(data_key: str, file_key: str, name: str) -> str | None:
                if user.get(data_key):
                    target = cert_dir / name
                    target.touch(mode=0o600)
                    target.write_bytes(base64.b64decode(user[data_key]))
                    return str(target)
                return str(user[file_key]) if user.get(file_key) else None

            cert = spill("client-certificate-data", "client-certificate", "client.crt")
            key = spill("client-key-data", "client-key", "client.key")
            if cert:
                ssl_ctx.load_cert_chain(cert, key)
        token: str | None = user.get("token")
        if not token and user.get("tokenFile"):
            token = Path(user["tokenFile"]).read_text().strip()
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        return cls(parsed.hostname or "127.0.0.1", port, ssl_ctx, token, server)

    def _conn(self, timeout: float) -> http.client.HTTPConnection:
        if self.ctx is not None:
            return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "smtp-infra-pod-runner"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        timeout: float = 15.0,
        ok: tuple[int, ...] = (200, 201, 202),
    ) -> Any:
        """One request; returns the parsed JSON body or raises ApiError for statuses not in ``ok``."""
        data = json.dumps(body).encode() if body is not None else None
        conn = self._conn(timeout)
        try:
            conn.request(method, path, body=data, headers=self._headers(content_type if data is not None else None))
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        if resp.status not in ok:
            raise ApiError(resp.status, parsed, f"{method} {path}")
        return parsed

    def watch(self, path: str, params: dict[str, str], timeout: float) -> Iterator[Obj]:
        """Yield watch events until the server ends the watch (its timeoutSeconds) or it breaks."""
        query = urllib.parse.urlencode({**params, "watch": "1"})
        conn = self._conn(timeout)
        try:
            conn.request("GET", f"{path}?{query}", headers=self._headers(None))
            resp = conn.getresponse()
            if resp.status != 200:
                raise ApiError(resp.status, resp.read().decode(errors="replace"), f"watch {path}")
            sock = conn.sock
            if sock is not None:
                with self._lock:
                    self._socks.add(sock)
            try:
                while True:
                    line = resp.readline()
                    if not line:
                        return
                    if line.strip():
                        yield json.loads(line)
            finally:
                if sock is not None:
                    with self._lock:
                        self._socks.discard(sock)
        finally:
            conn.close()

    def close_watches(self) -> None:
        """Unblock every running watch (used on shutdown)."""
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


class Reflector(threading.Thread):
    """List+watch one collection into a local cache, re-listing after any watch error (like client-go)."""

    def __init__(self, client: KubeClient, path: str, on_event: Callable[[str, Obj], None], name: str,
                 params: dict[str, str] | None = None) -> None:
        super().__init__(name=f"reflector-{name}", daemon=True)
        self.client = client
        self.path = path
        self.params = params or {}
        self.on_event = on_event
        self.store: dict[tuple[str, str], Obj] = {}
        self.lock = threading.Lock()
        self.synced = threading.Event()
        self.stopping = threading.Event()

    def get(self, namespace: str, name: str) -> Obj | None:
        with self.lock:
            return self.store.get((namespace, name))

    def items(self) -> list[Obj]:
        with self.lock:
            return list(self.store.values())

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        delay = 0.2
        while not self.stopping.is_set():
            try:
                rv: str | None = self._list()
                delay = 0.2
                while rv is not None and not self.stopping.is_set():
                    rv = self._watch(rv)
            except Exception as err:  # any failure: back off and re-list, never die
                if self.stopping.is_set():
                    return
                log.warning("%s: %s; re-listing in %.1fs", self.name, err, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 5.0)

    def _list(self) -> str:
        query = urllib.parse.urlencode(self.params)
        body = self.client.request("GET", f"{self.path}?{query}" if query else self.path, timeout=60)
        fresh = {_key(o): o for o in body.get("items") or []}
        with self.lock:
            old = self.store
            self.store = fresh
        for k, obj in fresh.items():
            prev = old.get(k)
            if prev is None or prev["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self.on_event("MODIFIED" if prev else "ADDED", obj)
        for k, obj in old.items():
            if k not in fresh:
                self.on_event("DELETED", obj)
        self.synced.set()
        return str(body["metadata"]["resourceVersion"])

    def _watch(self, rv: str) -> str | None:
        """Watch from ``rv``; returns the last resourceVersion, or None when a re-list is needed."""
        params = {**self.params, "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": "240"}
        for event in self.client.watch(self.path, params, timeout=300):
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                log.info("%s: watch error %s; re-listing", self.name, obj.get("message"))
                return None
            new_rv = obj.get("metadata", {}).get("resourceVersion")
            if new_rv:
                rv = str(new_rv)
            if kind == "BOOKMARK":
                continue
            with self.lock:
                if kind == "DELETED":
                    self.store.pop(_key(obj), None)
                else:
                    self.store[_key(obj)] = obj
            self.on_event(str(kind), obj)
        return rv


# --------------------------------------------------------------------------------------------
# Files: the kubelet's atomic writer


def write_payload(target: Path, payload: dict[str, tuple[bytes, int]]) -> bool:
    """Make ``target`` hold exactly ``payload`` (relative path -> (content, mode)); True if changed.

    Same layout as the kubelet's AtomicWriter: the files live in a hidden timestamped directory,
    ``..data`` is a symlink to it and each visible top-level entry is a symlink through
    ``..data``. An update writes a new directory and renames a new ``..data`` symlink over the
    old one, so a reader sees either the old or the new set of files, never a mix, and a process
    watching the path sees the change.
    """
    target.mkdir(parents=True, exist_ok=True)
    data_link = target / "..data"
    if data_link.is_symlink():
        current = target / data_link.readlink()
        if _payload_matches(current, payload):
            return False
    else:
        current = None
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.") + f"{random.randrange(10**9):09d}"
    new_dir = target / stamp
    new_dir.mkdir()
    for rel, (content, mode) in payload.items():
        path = new_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    tmp_link = target / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    tmp_link.symlink_to(stamp)
    tmp_link.replace(data_link)
    tops = {rel.split("/", 1)[0] for rel in payload}
    for top in tops:
        link = target / top
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    for entry in target.iterdir():
        if entry.name.startswith(".."):
            continue
        if entry.name not in tops and entry.is_symlink():
            entry.unlink()
    if current is not None and current.exists():
        shutil.rmtree(current, ignore_errors=True)
    return True


def _payload_matches(current: Path, payload: dict[str, tuple[bytes, int]]) -> bool:
    try:
        found = {str(p.relative_to(current)) for p in current.rglob("*") if p.is_file()}
        if found != set(payload):
            return False
        for rel, (content, mode) in payload.items():
            path = current / rel
            if path.read_bytes() != content or (path.stat().st_mode & 0o7777) != mode:
                return False
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Pod IPs


class IpAllocator:
    """Pod IPs from the runner's loopback CIDR, derived from namespace/name (stable across recreation).

    A released address stays reserved for the pod name that had it, so a pod recreated under the
    same name (a StatefulSet's) gets it back even when other pods were started in between; other
    names get it only when nothing else is free.
    """

    def __init__(self, cidr: str) -> None:
        self.net = ipaddress.IPv4Network(cidr)
        self.used: dict[str, tuple[str, str]] = {}  # ip -> (namespace/name, uid)
        self.last: dict[str, str] = {}  # namespace/name -> the ip it had last
        self.lock = threading.Lock()

    def allocate(self, ns_name: str, uid: str, preferred: str | None = None) -> str:
        with self.lock:
            for ip, (_who, owner_uid) in self.used.items():
                if owner_uid == uid:
                    return ip
            reserved = {ip for name, ip in self.last.items() if name != ns_name}
            for wanted in (preferred, self.last.get(ns_name)):
                if wanted and ipaddress.IPv4Address(wanted) in self.net and wanted not in self.used:
                    return self._take(wanted, ns_name, uid)
            size = self.net.num_addresses
            start = int.from_bytes(hashlib.sha256(ns_name.encode()).digest()[:8], "big") % size
            for avoid in (reserved, set()):
                for i in range(size):
                    addr = self.net[(start + i) % size]
                    ip = str(addr)
                    if int(addr) & 0xFF in (0, 255) or ip in self.used or ip in avoid:
                        continue
                    return self._take(ip, ns_name, uid)
        raise RuntimeError(f"pod CIDR {self.net} exhausted")

    def _take(self, ip: str, ns_name: str, uid: str) -> str:
        self.used[ip] = (ns_name, uid)
        kept = self.last.get(ns_name)
        if kept is None or self.used.get(kept, ("", ""))[0] != ns_name:  # not a second live pod of the name
            self.last[ns_name] = ip
        return ip

    def release(self, uid: str) -> None:
        with self.lock:
            for ip in [ip for ip, (_w, u) in self.used.items() if u == uid]:
                del self.used[ip]


# --------------------------------------------------------------------------------------------
# Configuration and the runner


@dataclass
class RunnerConfig:
    """What the runner needs; every field but the first two has a sensible default."""

    kubeconfig: Path
    state_dir: Path
    image_prefixes: tuple[str, ...] = field(default_factory=image_prefixes_from_env)
    pod_cidr: str = DEFAULT_POD_CIDR
    #: Only pods bound to these nodes (None: any node; there is no real kubelet anywhere here).
    nodes: frozenset[str] | None = None
    #: PATH of the processes unless the pod sets one (put the venv's bin first for ``smtp-infra``).
    path: str = field(default_factory=lambda: os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"))
    #: Crash-restart backoff: base doubling up to max (the kubelet uses 10s..300s; tests want speed).
    backoff_base: float = 1.0
    backoff_max: float = 20.0
    #: Upper bound on any grace period (keeps `down` bounded).
    max_grace: float = 60.0


class _NotReadyError(Exception):
    """A pod cannot start yet (missing ConfigMap/Secret/claim); ``reason`` goes into the status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class PodRunner:
    """Watches pods and runs the local ones; ``start()``/``stop()``, or use as a context manager."""

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir.absolute()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.client = KubeClient.from_kubeconfig(config.kubeconfig, self.state_dir / "kube")
        self.ips = IpAllocator(config.pod_cidr)
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.node_ips: dict[str, str] = {}
        self._lock_fh: Any = None
        self._tasks: queue.Queue[tuple[str, str]] = queue.Queue()
        self._pending_claims: set[tuple[str, str]] = set()
        self.pods = Reflector(self.client, "/api/v1/pods", self._on_pod, "pods")
        self.configmaps = Reflector(self.client, "/api/v1/configmaps", self._on_source, "configmaps")
        self.secrets = Reflector(self.client, "/api/v1/secrets", self._on_source, "secrets")
        self.claims = Reflector(self.client, "/api/v1/persistentvolumeclaims", self._on_claim, "pvcs")
        self.nodes = Reflector(self.client, "/api/v1/nodes", self._on_node, "nodes")
        self._housekeeper = threading.Thread(target=self._housekeeping, name="pod-runner-housekeeping", daemon=True)

    # -- lifecycle

    def start(self, timeout: float = 30.0) -> None:
        """Start watching; returns once the caches are synced (pods are then being started)."""
        self._lock_fh = (self.state_dir / ".lock").open("a")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise RuntimeError(f"another pod runner uses {self.state_dir}") from err
        # Leftovers of a previous run: its processes died with it (PDEATHSIG), their files are stale.
        shutil.rmtree(self.state_dir / "pods", ignore_errors=True)
        server = self.client.server
        log.info("pod runner: API %s, images %s, pod CIDR %s, state %s", server,
                 ",".join(self.config.image_prefixes), self.config.pod_cidr, self.state_dir)
        for r in (self.nodes, self.configmaps, self.secrets, self.claims):
            r.start()
        deadline = time.monotonic() + timeout
        for r in (self.nodes, self.configmaps, self.secrets, self.claims):
            if not r.synced.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"{r.name} did not sync within {timeout}s")
        self._housekeeper.start()
        self.pods.start()
        if not self.pods.synced.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"pods did not sync within {timeout}s")

    def stop(self) -> None:
        """Terminate every pod process (SIGTERM, grace, SIGKILL) and stop watching."""
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w.wake()
        for w in workers:
            w.join(self.config.max_grace + 10)
        for r in (self.pods, self.configmaps, self.secrets, self.claims, self.nodes):
            r.stop()
        self.client.close_watches()
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> PodRunner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_forever(self) -> None:
        """Run until SIGTERM/SIGINT (the CLI and ``up --run-pods``)."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        ready = self.state_dir / "ready"
        self.start(timeout=120)
        ready.write_text(f"{os.getpid()}\n")  # `up --run-pods` waits for this
        try:
            while not done.wait(1.0):
                pass
        finally:
            ready.unlink(missing_ok=True)
            log.info("pod runner stopping")
            self.stop()

    # -- paths

    def pod_dir(self, uid: str) -> Path:
        return self.state_dir / "pods" / uid

    def claim_dir(self, namespace: str, claim: str) -> Path:
        """Where a PersistentVolumeClaim's data lives; outlives pods (and the runner)."""
        return self.state_dir / "pvc" / namespace / claim

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        """A container's stdout/stderr (appended across restarts; like ``kubectl logs``, kept)."""
        return self.state_dir / "logs" / namespace / pod / f"{container}.log"

    # -- events

    def _wants(self, pod: Obj) -> bool:
        return is_local_pod(pod, self.config.image_prefixes)

    def _on_pod(self, kind: str, pod: Obj) -> None:
        if not self._wants(pod):
            return
        uid = str(pod["metadata"]["uid"])
        ns = _key(pod)[0]
        if kind != "DELETED" and not pod["metadata"].get("deletionTimestamp"):
            for claim in _claim_names(pod):
                self._tasks.put(("claim", f"{ns}/{claim}"))
        node = pod.get("spec", {}).get("nodeName")
        if not node or (self.config.nodes is not None and node not in self.config.nodes):
            return
        with self.lock:
            worker = self.workers.get(uid)
            if worker is None:
                if kind == "DELETED" or self.stopping.is_set():
                    return
                phase = pod.get("status", {}).get("phase")
                if phase in ("Succeeded", "Failed") and not pod["metadata"].get("deletionTimestamp"):
                    return  # finished before we came (a previous runner): nothing to run
                worker = PodWorker(self, pod)
                self.workers[uid] = worker
                worker.start()
                return
        worker.update(pod, gone=kind == "DELETED")

    def _on_source(self, kind: str, obj: Obj) -> None:
        """A ConfigMap/Secret changed: wake the pods using it so their files and env follow."""
        ns = obj["metadata"].get("namespace")
        with self.lock:
            workers = [w for w in self.workers.values() if w.namespace == ns]
        for w in workers:
            w.wake(resync=True)

    def _on_claim(self, kind: str, claim: Obj) -> None:
        ns, name = _key(claim)
        if kind != "DELETED" and not claim.get("spec", {}).get("volumeName"):
            with self.lock:
                pending = (ns, name) in self._pending_claims
            if pending:
                self._tasks.put(("claim", f"{ns}/{name}"))
        if kind == "DELETED":
            self._tasks.put(("sweep", ""))

    def _on_node(self, kind: str, node: Obj) -> None:
        for addr in node.get("status", {}).get("addresses") or []:
            if addr.get("type") == "InternalIP":
                with self.lock:
                    self.node_ips[node["metadata"]["name"]] = str(addr["address"])

    def worker_done(self, uid: str) -> None:
        with self.lock:
            self.workers.pop(uid, None)

    # -- claims -> PersistentVolumes

    def _housekeeping(self) -> None:
        """Bind the claims of our pods to hostPath PVs; delete our PVs whose claims are gone."""
        next_sweep = time.monotonic() + 5
        while not self.stopping.is_set():
            try:
                kind, arg = self._tasks.get(timeout=1.0)
            except queue.Empty:
                kind, arg = "", ""
            try:
                if kind == "claim":
                    ns, name = arg.split("/", 1)
                    self._ensure_volume(ns, name)
                if kind == "sweep" or time.monotonic() > next_sweep:
                    next_sweep = time.monotonic() + 30
                    self._sweep_volumes()
            except Exception as err:
                log.warning("housekeeping %s %s: %s", kind, arg, err)
                if kind == "claim":
                    threading.Timer(2.0, self._tasks.put, args=((kind, arg),)).start()

    def _ensure_volume(self, ns: str, name: str) -> None:
        claim = self.claims.get(ns, name)
        if claim is None:
            with self.lock:
                self._pending_claims.add((ns, name))  # created later (ephemeral volumes)
            return
        with self.lock:
            self._pending_claims.discard((ns, name))
        spec = claim.get("spec") or {}
        if spec.get("volumeName"):
            return
        pv_name = _pv_name(ns, name)
        directory = self.claim_dir(ns, name)
        directory.mkdir(parents=True, exist_ok=True)
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "labels": {RUNNER_LABEL: "true"},
                         "annotations": {"pod-runner.smtp-infra.io/claim": f"{ns}/{name}"}},
            "spec": {
                "capacity": {"storage": (spec.get("resources") or {}).get("requests", {}).get("storage", "1Gi")},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": spec.get("storageClassName") or "",
                "volumeMode": spec.get("volumeMode") or "Filesystem",
                "hostPath": {"path": str(directory), "type": "DirectoryOrCreate"},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name,
                             "uid": claim["metadata"]["uid"]},
            },
        }
        try:
            self.client.request("POST", "/api/v1/persistentvolumes", pv)
            log.info("bound claim %s/%s to PersistentVolume %s (%s)", ns, name, pv_name, directory)
        except ApiError as err:
            if err.status != 409:
                raise
            existing = self.client.request("GET", f"/api/v1/persistentvolumes/{pv_name}")
            if (existing.get("spec", {}).get("claimRef") or {}).get("uid") != claim["metadata"]["uid"]:
                # Left over from an earlier claim of the same name: replace it (data dir stays).
                self.client.request("DELETE", f"/api/v1/persistentvolumes/{pv_name}", ok=(200, 202, 404))
                raise RuntimeError(f"replaced stale PersistentVolume {pv_name}") from err

    def _sweep_volumes(self) -> None:
        pvs = self.client.request("GET", f"/api/v1/persistentvolumes?labelSelector={RUNNER_LABEL}%3Dtrue")
        for pv in pvs.get("items") or []:
            if pv.get("status", {}).get("phase") == "Released":
                name = pv["metadata"]["name"]
                self.client.request("DELETE", f"/api/v1/persistentvolumes/{name}", ok=(200, 202, 404))


def _pv_name(ns: str, claim: str) -> str:
    base = f"pod-runner-{ns}-{claim}"
    if len(base) <= 200:
        return base
    return f"pod-runner-{hashlib.sha256(f'{ns}/{claim}'.encode()).hexdigest()[:20]}"


def _claim_names(pod: Obj) -> list[str]:
    names = []
    pod_name = pod["metadata"]["name"]
    for vol in pod.get("spec", {}).get("volumes") or []:
        if vol.get("persistentVolumeClaim"):
            names.append(str(vol["persistentVolumeClaim"]["claimName"]))
        elif vol.get("ephemeral"):
            names.append(f"{pod_name}-{vol['name']}")
    return names


# --------------------------------------------------------------------------------------------
# One pod


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_runner() -> None:
    """preexec_fn: the process gets SIGKILL if the runner dies without cleaning up."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class _Probe:
    spec: Obj
    started: float
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0
    passed: bool = False  # readiness/startup: current verdict

    def __post_init__(self) -> None:
        self.next_at = self.started + float(self.spec.get("initialDelaySeconds", 0))

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds", 1))


@dataclass
class _Container:
    spec: Obj
    init: bool = False
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    started_at: str | None = None
    started_mono: float = 0.0
    restart_count: int = 0
    crashes: int = 0  # consecutive, for the backoff
    next_start: float = 0.0
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    ready: bool = False
    done: bool = False  # finished for good (init succeeded, or restartPolicy says no restart)
    exit_code: int | None = None
    readiness: _Probe | None = None
    liveness: _Probe | None = None
    startup: _Probe | None = None
    kill_reason: str | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class PodWorker(threading.Thread):
    """Runs one pod from binding to deletion: volumes, processes, probes, status (a tiny kubelet)."""

    def __init__(self, runner: PodRunner, pod: Obj) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.runner = runner
        self.client = runner.client
        self.pod = pod
        self.uid = str(meta["uid"])
        self.namespace = str(meta["namespace"])
        self.pod_name = str(meta["name"])
        self.gone = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._resync = True
        self.dir = runner.pod_dir(self.uid)
        self.pod_ip = ""
        self.host_ip = "127.0.0.1"
        self.start_time = _now()
        self.init_containers = [_Container(c, init=True) for c in pod["spec"].get("initContainers") or []]
        self.containers = [_Container(c) for c in pod["spec"].get("containers") or []]
        self.volumes_ready = False
        self.volume_error: _NotReadyError | None = None
        self.next_volume_sync = 0.0
        self.tokens: dict[str, tuple[str, float]] = {}  # volume/path -> (token, refresh at)
        self.last_status: Obj | None = None
        self.transitions: dict[str, tuple[str, str]] = {}
        self.failed_phase: str | None = None
        previous = {s["name"]: s for s in (pod.get("status", {}).get("containerStatuses") or [])}
        for c in self.containers:
            # A pod we ran before the runner restarted: its process is gone, count it as a restart.
            prev = previous.get(c.name)
            if prev:
                started = bool({"running", "terminated"} & set(prev.get("state") or {}))
                c.restart_count = int(prev.get("restartCount", 0)) + int(started)

    # -- inputs from the runner

    def update(self, pod: Obj, gone: bool = False) -> None:
        """A new version of the pod (labels/annotations feed downwardAPI files, so resync)."""
        with self._lock:
            self.pod = pod
            self.gone = self.gone or gone
        self._resync = True
        self._wake.set()

    def wake(self, resync: bool = False) -> None:
        if resync:
            self._resync = True
        self._wake.set()

    # -- main loop

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s/%s: worker failed", self.namespace, self.pod_name)
            self._kill_all(0.0)
        finally:
            self.runner.ips.release(self.uid)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.runner.worker_done(self.uid)

    def _run(self) -> None:
        with self._lock:
            pod = self.pod
        node = pod["spec"].get("nodeName", "")
        with self.runner.lock:
            self.host_ip = self.runner.node_ips.get(node, "127.0.0.1")
        if pod["spec"].get("hostNetwork"):
            self.pod_ip = self.host_ip  # like the kubelet: the pod shares the node's address
        else:
            preferred = pod.get("status", {}).get("podIP")
            self.pod_ip = self.runner.ips.allocate(f"{self.namespace}/{self.pod_name}", self.uid, preferred)
        self.start_time = pod.get("status", {}).get("startTime") or _now()
        log.info("pod %s/%s: starting on %s with IP %s", self.namespace, self.pod_name, node, self.pod_ip)
        while True:
            with self._lock:
                pod, gone = self.pod, self.gone
            if gone or pod["metadata"].get("deletionTimestamp"):
                self._shut_down(pod, deleted=not gone)
                return
            if self.runner.stopping.is_set():
                self._shut_down(pod, deleted=False)
                return
            now = time.monotonic()
            if self._resync or now >= self.next_volume_sync or not self.volumes_ready:
                self._resync = False
                self.next_volume_sync = now + 10.0
                self._sync_volumes(pod)
            if self.volumes_ready and self.failed_phase is None:
                self._step_containers(pod)
                self._step_probes(pod)
            self._patch_status(pod)
            self._wake.wait(_TICK)
            self._wake.clear()

    # -- volumes

    def _sync_volumes(self, pod: Obj) -> None:
        try:
            for vol in pod["spec"].get("volumes") or []:
                self._sync_volume(pod, vol)
        except _NotReadyError as err:
            if not self.volumes_ready:
                self.volume_error = err
                self.next_volume_sync = time.monotonic() + 1.0
            else:
                log.warning("pod %s/%s: volume resync: %s", self.namespace, self.pod_name, err.message)
            return
        self.volumes_ready = True
        self.volume_error = None

    def volume_path(self, pod: Obj, vol: Obj) -> Path:
        """Host directory that backs a volume (PVCs live outside the pod dir and survive it)."""
        if vol.get("persistentVolumeClaim"):
            return self.runner.claim_dir(self.namespace, str(vol["persistentVolumeClaim"]["claimName"]))
        if vol.get("ephemeral"):
            return self.runner.claim_dir(self.namespace, f"{self.pod_name}-{vol['name']}")
        if vol.get("hostPath"):
            return Path(vol["hostPath"]["path"])
        return self.dir / "volumes" / str(vol["name"])

    def _sync_volume(self, pod: Obj, vol: Obj) -> None:
        target = self.volume_path(pod, vol)
        name = vol["name"]
        if vol.get("configMap") is not None:
            write_payload(target, self._source_payload("configmap", vol["configMap"], 0o644))
        elif vol.get("secret") is not None:
            src = dict(vol["secret"])
            src["name"] = src.get("secretName", "")
            write_payload(target, self._source_payload("secret", src, 0o644))
        elif vol.get("downwardAPI") is not None:
            write_payload(target, self._downward_payload(pod, vol["downwardAPI"], 0o644))
        elif vol.get("projected") is not None:
            write_payload(target, self._projected_payload(pod, name, vol["projected"]))
        elif vol.get("persistentVolumeClaim") or vol.get("ephemeral"):
            target.mkdir(parents=True, exist_ok=True)
        elif vol.get("hostPath"):
            kind = vol["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                target.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate" and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
        else:  # emptyDir and anything unsupported: an empty directory
            if vol.get("emptyDir") is None:
                log.warning("pod %s/%s: volume %s: unsupported kind, using an empty dir",
                            self.namespace, self.pod_name, name)
            target.mkdir(parents=True, exist_ok=True)

    def _lookup(self, kind: str, name: str) -> Obj | None:
        reflector = self.runner.configmaps if kind == "configmap" else self.runner.secrets
        return reflector.get(self.namespace, name)

    def _source_data(self, kind: str, obj: Obj) -> dict[str, bytes]:
        data: dict[str, bytes] = {}
        if kind == "configmap":
            data.update({k: str(v).encode() for k, v in (obj.get("data") or {}).items()})
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        else:
            data.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
            data.update({k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()})
        return data

    def _source_payload(self, kind: str, src: Obj, default_mode: int) -> dict[str, tuple[bytes, int]]:
        """configMap/secret source -> files (all keys, or ``items`` with paths and modes)."""
        mode = int(src.get("defaultMode", default_mode))
        obj = self._lookup(kind, str(src.get("name", "")))
        if obj is None:
            if src.get("optional"):
                return {}
            raise _NotReadyError("ContainerCreating", f'{kind} "{src.get("name")}" not found')
        data = self._source_data(kind, obj)
        items = src.get("items")
        if not items:
            return {k: (v, mode) for k, v in data.items()}
        out: dict[str, tuple[bytes, int]] = {}
        for item in items:
            if item["key"] not in data:
                if src.get("optional"):
                    continue
                raise _NotReadyError("ContainerCreating", f'{kind} "{src.get("name")}" has no key {item["key"]!r}')
            out[str(item["path"])] = (data[item["key"]], int(item.get("mode", mode)))
        return out

    def _downward_payload(self, pod: Obj, src: Obj, default_mode: int) -> dict[str, tuple[bytes, int]]:
        mode = int(src.get("defaultMode", default_mode))
        out: dict[str, tuple[bytes, int]] = {}
        for item in src.get("items") or []:
            if item.get("fieldRef"):
                value = self._field(pod, str(item["fieldRef"]["fieldPath"]))
            elif item.get("resourceFieldRef"):
                value = self._resource_field(pod, item["resourceFieldRef"])
            else:
                continue
            out[str(item["path"])] = (value.encode(), int(item.get("mode", mode)))
        return out

    def _projected_payload(self, pod: Obj, vol_name: str, src: Obj) -> dict[str, tuple[bytes, int]]:
        mode = int(src.get("defaultMode", 0o644))
        out: dict[str, tuple[bytes, int]] = {}
        for source in src.get("sources") or []:
            if source.get("configMap") is not None:
                out.update(self._source_payload("configmap", source["configMap"], mode))
            elif source.get("secret") is not None:
                out.update(self._source_payload("secret", source["secret"], mode))
            elif source.get("downwardAPI") is not None:
                out.update(self._downward_payload(pod, {**source["downwardAPI"], "defaultMode": mode}, mode))
            elif source.get("serviceAccountToken") is not None:
                sat = source["serviceAccountToken"]
                out[str(sat["path"])] = (self._token(pod, vol_name, sat).encode(), mode)
        return out

    def _token(self, pod: Obj, vol_name: str, sat: Obj) -> str:
        """A real bound service-account token (TokenRequest), refreshed at 80% of its lifetime."""
        key = f"{vol_name}/{sat['path']}"
        cached = self.tokens.get(key)
        if cached and time.monotonic() < cached[1]:
            return cached[0]
        seconds = int(sat.get("expirationSeconds", 3600))
        sa = pod["spec"].get("serviceAccountName") or "default"
        body: Obj = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.pod_name, "uid": self.uid},
            },
        }
        if sat.get("audience"):
            body["spec"]["audiences"] = [sat["audience"]]
        try:
            resp = self.client.request(
                "POST", f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{sa}/token", body
            )
        except (ApiError, OSError) as err:
            if cached:
                return cached[0]
            raise _NotReadyError("ContainerCreating", f"service account token: {err}") from err
        token = str(resp["status"]["token"])
        self.tokens[key] = (token, time.monotonic() + seconds * 0.8)
        return token

    def _field(self, pod: Obj, path: str) -> str:
        meta = pod["metadata"]
        if path.startswith(("metadata.labels[", "metadata.annotations[")):
            group, rest = path.split("[", 1)
            key = rest.rstrip("]").strip("'\"")
            return str((meta.get(group.split(".")[1]) or {}).get(key, ""))
        if path in ("metadata.labels", "metadata.annotations"):
            values = meta.get(path.split(".")[1]) or {}
            return "\n".join(f"{k}={json.dumps(str(v))}" for k, v in sorted(values.items()))
        simple = {
            "metadata.name": self.pod_name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
            "spec.nodeName": str(pod["spec"].get("nodeName", "")),
            "spec.serviceAccountName": str(pod["spec"].get("serviceAccountName", "")),
            "status.podIP": self.pod_ip,
            "status.podIPs": self.pod_ip,
            "status.hostIP": self.host_ip,
            "status.hostIPs": self.host_ip,
        }
        if path not in simple:
            raise _NotReadyError("CreateContainerConfigError", f"unsupported fieldRef {path}")
        return simple[path]

    def _resource_field(self, pod: Obj, ref: Obj) -> str:
        """requests/limits of a container; unset limits report 'node allocatable' as a large number."""
        cname = ref.get("containerName") or pod["spec"]["containers"][0]["name"]
        spec: Obj = next((c for c in pod["spec"]["containers"] if c["name"] == cname), {})
        group, _, res = str(ref["resource"]).partition(".")
        value = ((spec.get("resources") or {}).get(group) or {}).get(res)
        if value is None:
            return str(os.cpu_count() or 1) if res == "cpu" else str(os.sysconf("SC_PAGE_SIZE") *
                                                                        os.sysconf("SC_PHYS_PAGES"))
        return str(value)

    # -- environment and command

    def _build_env(self, pod: Obj, c: _Container) -> dict[str, str]:
        spec = c.spec
        env: dict[str, str] = {}
        for src in spec.get("envFrom") or []:
            prefix = str(src.get("prefix", ""))
            ref = src.get("configMapRef") or src.get("secretRef") or {}
            kind = "configmap" if src.get("configMapRef") is not None else "secret"
            obj = self._lookup(kind, str(ref.get("name", "")))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise _NotReadyError("CreateContainerConfigError", f'{kind} "{ref.get("name")}" not found')
            for k, v in self._source_data(kind, obj).items():
                env[prefix + k] = v.decode(errors="replace")
        for var in spec.get("env") or []:
            name = str(var["name"])
            if "valueFrom" not in var:
                env[name] = expand(str(var.get("value", "")), env)
                continue
            vf = var["valueFrom"]
            if vf.get("fieldRef"):
                env[name] = self._field(pod, str(vf["fieldRef"]["fieldPath"]))
            elif vf.get("resourceFieldRef"):
                env[name] = self._resource_field(pod, vf["resourceFieldRef"])
            else:
                ref = vf.get("configMapKeyRef") or vf.get("secretKeyRef") or {}
                kind = "configmap" if vf.get("configMapKeyRef") is not None else "secret"
                obj = self._lookup(kind, str(ref.get("name", "")))
                data = self._source_data(kind, obj) if obj is not None else None
                if data is None or ref.get("key") not in data:
                    if ref.get("optional"):
                        continue
                    raise _NotReadyError(
                        "CreateContainerConfigError", f'{kind} "{ref.get("name")}" key {ref.get("key")!r} not found'
                    )
                env[name] = data[str(ref["key"])].decode(errors="replace")
        return env

    def _process_env(self, pod: Obj, c: _Container, env: dict[str, str]) -> dict[str, str]:
        """What the process gets: runtime defaults, then the container's own env."""
        server = urllib.parse.urlsplit(self.client.server)
        base = {
            "PATH": self.runner.config.path,
            "HOME": "/root",
            "HOSTNAME": self._hostname(pod),
            "KUBERNETES_SERVICE_HOST": server.hostname or "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(server.port or 443),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(server.port or 443),
            "PYTHONUNBUFFERED": "1",
        }
        return {**base, **env}

    def _hostname(self, pod: Obj) -> str:
        return str(pod["spec"].get("hostname") or self.pod_name)[:63]

    def _argv(self, c: _Container, env: dict[str, str]) -> list[str]:
        """command/args like a container runtime: image ENTRYPOINT/CMD fill in what the spec omits."""
        image = str(c.spec.get("image", ""))
        repo = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
        entrypoint, cmd = IMAGE_DEFAULTS.get(repo, ([], []))
        command = c.spec.get("command")
        args = c.spec.get("args")
        argv = [*command, *(args or [])] if command else [*entrypoint, *(args if args is not None else cmd)]
        argv = [expand(str(a), env) for a in argv]
        if not argv:
            raise _NotReadyError("RunContainerError", f"container {c.name}: no command and no known entrypoint")
        return argv

    def _mount_script(self, pod: Obj, c: _Container, env: dict[str, str]) -> str:
        """Shell run inside the new mount+UTS namespace: bind volumes, set the hostname, exec."""
        vols = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        lines = ["set -e"]
        mounts: list[tuple[str, Path, bool]] = []
        for vm in c.spec.get("volumeMounts") or []:
            vol = vols.get(vm["name"])
            if vol is None:
                raise _NotReadyError("CreateContainerConfigError", f"volumeMount of unknown volume {vm['name']}")
            src = self.volume_path(pod, vol)
            sub = vm.get("subPath") or (expand(vm["subPathExpr"], env) if vm.get("subPathExpr") else "")
            if sub:
                src = src / sub
                if not src.exists() and not src.is_symlink():
                    src.mkdir(parents=True, exist_ok=True)
                src = src.resolve()
            mounts.append((str(vm["mountPath"]), src, bool(vm.get("readOnly"))))
        if not any(m[0] == "/etc/hosts" for m in mounts):
            hosts = self.dir / "etc-hosts"
            host_hosts = ""
            with contextlib.suppress(OSError):
                host_hosts = Path("/etc/hosts").read_text()
            hosts.write_text(f"# managed by the smtp-infra pod runner\n{host_hosts.rstrip()}\n"
                             f"{self.pod_ip}\t{self._hostname(pod)}\n")
            mounts.append(("/etc/hosts", hosts, False))
        for dst, src, ro in sorted(mounts, key=lambda m: m[0].rstrip("/").count("/")):
            q_dst, q_src = shlex.quote(dst), shlex.quote(str(src))
            if src.is_dir():
                lines.append(f"[ -d {q_dst} ] || mkdir -p {q_dst}")
            else:
                lines.append(f"[ -e {q_dst} ] || {{ mkdir -p \"$(dirname {q_dst})\"; : > {q_dst}; }}")
            lines.append(f"mount --bind {q_src} {q_dst}")
            if ro:
                lines.append(f"mount -o remount,bind,ro {q_dst}")
        lines.append(f"hostname {shlex.quote(self._hostname(pod))} 2>/dev/null || true")
        workdir = c.spec.get("workingDir") or "/"
        lines.append(f"cd {shlex.quote(workdir)}")
        lines.append('exec "$@"')
        return "\n".join(lines)

    def _start(self, pod: Obj, c: _Container) -> None:
        try:
            env = self._build_env(pod, c)
            proc_env = self._process_env(pod, c, env)
            argv = self._argv(c, proc_env)
            script = self._mount_script(pod, c, proc_env)
        except _NotReadyError as err:
            c.state = {"waiting": {"reason": err.reason, "message": err.message}}
            c.next_start = time.monotonic() + 1.0
            return
        if "/" not in argv[0]:
            found = shutil.which(argv[0], path=proc_env.get("PATH"))
            if found:
                argv[0] = found
        log_path = self.runner.log_path(self.namespace, self.pod_name, c.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        unshare = ["unshare", "--mount", "--uts", "--propagation", "private"]
        if os.geteuid() != 0:
            unshare.append("--map-root-user")
        with log_path.open("ab") as out:
            try:
                c.proc = subprocess.Popen(  # preexec_fn only calls prctl
                    [*unshare, "--", "/bin/sh", "-c", script, "sh", *argv],
                    env=proc_env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_runner,
                    close_fds=True,
                )
            except OSError as err:
                c.state = {"waiting": {"reason": "RunContainerError", "message": str(err)}}
                c.next_start = time.monotonic() + 2.0
                return
        c.env = proc_env
        c.started_at = _now()
        c.started_mono = time.monotonic()
        c.state = {"running": {"startedAt": c.started_at}}
        c.ready = False
        c.kill_reason = None
        now = time.monotonic()
        c.readiness = _Probe(c.spec["readinessProbe"], now) if c.spec.get("readinessProbe") else None
        c.liveness = _Probe(c.spec["livenessProbe"], now) if c.spec.get("livenessProbe") else None
        c.startup = _Probe(c.spec["startupProbe"], now) if c.spec.get("startupProbe") else None
        log.info("pod %s/%s: container %s started (pid %d): %s", self.namespace, self.pod_name, c.name,
                 c.proc.pid, " ".join(argv))

    def _record_exit(self, c: _Container) -> Obj:
        """The process of ``c`` exited: clean up its process group, return its terminated state."""
        assert c.proc is not None
        code = c.proc.returncode
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(c.proc.pid, signal.SIGKILL)  # leftovers of its process group
        exit_code = code if code >= 0 else 128 - code
        reason = "Completed" if exit_code == 0 else ("Error" if c.kill_reason is None else c.kill_reason)
        term: Obj = {"exitCode": exit_code, "reason": reason, "startedAt": c.started_at, "finishedAt": _now()}
        if code < 0:
            term["signal"] = -code
        c.proc = None
        c.ready = False
        c.exit_code = exit_code
        log.info("pod %s/%s: container %s exited with %d", self.namespace, self.pod_name, c.name, exit_code)
        return term

    def _reap(self, pod: Obj, c: _Container) -> None:
        """The process of ``c`` exited: record it and decide about a restart (restartPolicy)."""
        term = self._record_exit(c)
        exit_code = term["exitCode"]
        policy = pod["spec"].get("restartPolicy", "Always")
        restart = (policy == "Always" and not c.init) or (policy != "Never" and exit_code != 0)
        if c.init and exit_code == 0:
            c.done = True
            c.state = {"terminated": term}
            return
        if not restart:
            c.done = True
            c.state = {"terminated": term}
            if c.init:
                self.failed_phase = "Failed"
            return
        ran = time.monotonic() - c.started_mono
        c.crashes = 1 if ran > 10 * self.runner.config.backoff_max else c.crashes + 1
        delay = min(self.runner.config.backoff_base * 2 ** (c.crashes - 1), self.runner.config.backoff_max)
        c.next_start = time.monotonic() + delay
        c.last_state = {"terminated": term}
        c.restart_count += 1
        c.state = {"waiting": {"reason": "CrashLoopBackOff",
                               "message": f"back-off {delay:.0f}s restarting failed container={c.name}"}}

    def _step_containers(self, pod: Obj) -> None:
        now = time.monotonic()
        for c in self.init_containers:
            if c.done:
                continue
            if c.proc is not None and c.proc.poll() is not None:
                self._reap(pod, c)
            if c.proc is None and not c.done and now >= c.next_start:
                self._start(pod, c)
            if not c.done:
                return  # init containers run one after another
        for c in self.containers:
            if c.proc is not None and c.proc.poll() is not None:
                self._reap(pod, c)
            if c.proc is None and not c.done and now >= c.next_start:
                self._start(pod, c)

    # -- probes

    def _step_probes(self, pod: Obj) -> None:
        now = time.monotonic()
        for c in self.containers:
            if not c.running:
                continue
            if c.startup is not None and not c.startup.passed:
                self._run_probe(c, c.startup, now)
                if not c.startup.passed:
                    if c.startup.failures >= int(c.startup.spec.get("failureThreshold", 3)):
                        self._kill_for_restart(pod, c, "startup probe failed")
                    continue
            live = c.liveness
            if live is not None and self._run_probe(c, live, now) and live.failures >= int(
                live.spec.get("failureThreshold", 3)
            ):
                self._kill_for_restart(pod, c, "liveness probe failed")
                continue
            if c.readiness is None:
                c.ready = True
            elif self._run_probe(c, c.readiness, now):
                c.ready = c.readiness.passed

    def _run_probe(self, c: _Container, probe: _Probe, now: float) -> bool:
        """Run ``probe`` if due; updates its counters/verdict and returns whether it ran."""
        if now < probe.next_at:
            return False
        ok = self._probe_once(c, probe.spec, probe.timeout)
        probe.next_at = time.monotonic() + probe.period
        if ok:
            probe.successes += 1
            probe.failures = 0
            if probe.successes >= int(probe.spec.get("successThreshold", 1)):
                probe.passed = True
        else:
            probe.failures += 1
            probe.successes = 0
            if probe.failures >= int(probe.spec.get("failureThreshold", 3)):
                probe.passed = False
        return True

    def _port(self, c: _Container, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"unknown named port {port}")

    def _probe_once(self, c: _Container, spec: Obj, timeout: float) -> bool:
        try:
            if spec.get("httpGet") is not None:
                hg = spec["httpGet"]
                host = hg.get("host") or self.pod_ip
                cls = http.client.HTTPSConnection if hg.get("scheme") == "HTTPS" else http.client.HTTPConnection
                kwargs: dict[str, Any] = {"timeout": timeout}
                if cls is http.client.HTTPSConnection:
                    kwargs["context"] = ssl._create_unverified_context()
                conn = cls(host, self._port(c, hg["port"]), **kwargs)
                try:
                    headers = {"User-Agent": "kube-probe/1.36", "Accept": "*/*"}
                    headers.update({h["name"]: h["value"] for h in hg.get("httpHeaders") or []})
                    conn.request("GET", hg.get("path") or "/", headers=headers)
                    status = conn.getresponse().status
                finally:
                    conn.close()
                return 200 <= status < 400
            if spec.get("tcpSocket") is not None or spec.get("grpc") is not None:
                ts = spec.get("tcpSocket") or spec["grpc"]
                with socket.create_connection((ts.get("host") or self.pod_ip, self._port(c, ts["port"])), timeout):
                    return True
            if spec.get("exec") is not None:
                return self._exec_in(c, list(spec["exec"].get("command") or []), timeout) == 0
        except (OSError, ValueError, http.client.HTTPException):
            return False
        return False

    def _exec_in(self, c: _Container, command: list[str], timeout: float) -> int:
        """Run ``command`` in the container's mount/UTS namespaces (exec probes, preStop hooks)."""
        if c.proc is None or not command:
            return -1
        argv = ["nsenter", "-t", str(c.proc.pid), "-m", "-u", "--", *command]
        try:
            return subprocess.run(argv, env=c.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=timeout, check=False).returncode
        except (OSError, subprocess.TimeoutExpired):
            return -1

    def _kill_for_restart(self, pod: Obj, c: _Container, why: str) -> None:
        log.info("pod %s/%s: container %s: %s, restarting", self.namespace, self.pod_name, c.name, why)
        c.kill_reason = "Error"
        grace = float(pod["spec"].get("terminationGracePeriodSeconds", _KUBELET_DEFAULT_GRACE))
        self._terminate([c], min(grace, self.runner.config.max_grace))
        if c.proc is not None:
            self._reap(pod, c)
            if not c.done:
                c.next_start = time.monotonic()  # liveness restarts are not crash-looping
                c.state = {"waiting": {"reason": "ContainerCreating", "message": why}}

    # -- termination

    def _terminate(self, containers: list[_Container], grace: float) -> None:
        """SIGTERM the process groups, wait up to ``grace`` seconds, SIGKILL what is left."""
        live = [c for c in containers if c.running]
        for c in live:
            assert c.proc is not None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(c.running for c in live) and time.monotonic() < deadline:
            time.sleep(0.05)
        for c in live:
            if c.running:
                assert c.proc is not None
                log.info("pod %s/%s: container %s ignored SIGTERM for %.0fs; killing it",
                         self.namespace, self.pod_name, c.name, grace)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
                c.proc.wait(10)

    def _kill_all(self, grace: float) -> None:
        self._terminate([*self.init_containers, *self.containers], grace)
        for c in [*self.init_containers, *self.containers]:
            if c.proc is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.proc.pid, signal.SIGKILL)

    def _grace(self, pod: Obj) -> float:
        meta_grace = pod["metadata"].get("deletionGracePeriodSeconds")
        grace = meta_grace if meta_grace is not None else pod["spec"].get("terminationGracePeriodSeconds")
        return min(float(grace if grace is not None else _KUBELET_DEFAULT_GRACE), self.runner.config.max_grace)

    def _shut_down(self, pod: Obj, *, deleted: bool) -> None:
        """Pod deleted (or runner stopping): preStop hooks, SIGTERM, grace, SIGKILL, final delete."""
        grace = self._grace(pod)
        deadline = time.monotonic() + grace
        for c in self.containers:
            hook = ((c.spec.get("lifecycle") or {}).get("preStop") or {})
            if c.running and hook:
                if hook.get("exec"):
                    self._exec_in(c, list(hook["exec"].get("command") or []), max(0.0, deadline - time.monotonic()))
                elif hook.get("httpGet") or hook.get("sleep"):
                    if hook.get("sleep"):
                        time.sleep(min(float(hook["sleep"].get("seconds", 0)), max(0.0, deadline - time.monotonic())))
                    else:
                        self._probe_once(c, hook, max(0.1, deadline - time.monotonic()))
        self._terminate([*self.init_containers, *self.containers], max(0.0, deadline - time.monotonic()))
        for c in [*self.init_containers, *self.containers]:
            if c.proc is not None:
                c.state = {"terminated": self._record_exit(c)}
        log.info("pod %s/%s: stopped (%s)", self.namespace, self.pod_name, "deleted" if deleted else "runner stop")
        if deleted:
            self.runner.ips.release(self.uid)
            body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid}}
            try:
                self.client.request("DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}", body,
                                    ok=(200, 202, 404, 409))
            except (ApiError, OSError) as err:
                log.warning("pod %s/%s: final delete failed: %s", self.namespace, self.pod_name, err)
        else:
            for c in self.containers:
                c.ready = False
            with contextlib.suppress(ApiError, OSError):
                self._patch_status(pod, timeout=3.0)

    # -- status

    def _container_status(self, c: _Container) -> Obj:
        image = str(c.spec.get("image", ""))
        status: Obj = {
            "name": c.name,
            "image": image,
            "imageID": f"local://{image}",
            "ready": bool(c.ready and c.running),
            "restartCount": c.restart_count,
            "started": c.running and (c.startup is None or c.startup.passed),
            "state": c.state,
        }
        if c.proc is not None:
            status["containerID"] = f"podrunner://{self.uid}/{c.name}/{c.restart_count}"
        if c.last_state:
            status["lastState"] = c.last_state
        return status

    def _condition(self, kind: str, ok: bool, reason: str | None = None) -> Obj:
        value = "True" if ok else "False"
        prev = self.transitions.get(kind)
        if prev is None or prev[0] != value:
            prev = (value, _now())
            self.transitions[kind] = prev
        cond: Obj = {"type": kind, "status": value, "lastProbeTime": None, "lastTransitionTime": prev[1]}
        if reason and not ok:
            cond["reason"] = reason
        return cond

    def _patch_status(self, pod: Obj, timeout: float = 10.0) -> None:
        all_init = all(c.done and c.exit_code == 0 for c in self.init_containers)
        statuses = [self._container_status(c) for c in self.containers]
        ready = bool(statuses) and all(s["ready"] for s in statuses)
        existing = pod.get("status", {}).get("conditions") or []
        gates = [g["conditionType"] for g in pod["spec"].get("readinessGates") or []]
        gates_ok = all(any(c["type"] == g and c.get("status") == "True" for c in existing) for g in gates)
        if all(c.done for c in self.containers) and self.containers:
            phase = "Succeeded" if all(c.exit_code == 0 for c in self.containers) else "Failed"
        elif self.failed_phase:
            phase = self.failed_phase
        elif any(c.running or c.restart_count or c.done for c in self.containers):
            phase = "Running"
        else:
            phase = "Pending"
        ours = {"PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"}
        conditions = [c for c in existing if c.get("type") not in ours]
        conditions += [
            self._condition("PodReadyToStartContainers", True),
            self._condition("Initialized", all_init, "PodInitializing" if not all_init else None),
            self._condition("ContainersReady", ready, "ContainersNotReady"),
            self._condition("Ready", ready and gates_ok, "ReadinessGatesNotReady" if ready else "ContainersNotReady"),
        ]
        if not self.volumes_ready and self.volume_error is not None:
            for s in statuses:
                s["state"] = {"waiting": {"reason": self.volume_error.reason, "message": self.volume_error.message}}
        status: Obj = {
            "phase": phase,
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time,
            "conditions": conditions,
            "containerStatuses": statuses,
            "qosClass": pod.get("status", {}).get("qosClass") or "BestEffort",
        }
        if self.init_containers:
            status["initContainerStatuses"] = [self._container_status(c) for c in self.init_containers]
        if status == self.last_status:
            return
        try:
            self.client.request(
                "PATCH",
                f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}/status",
                {"metadata": {"uid": self.uid}, "status": status},
                content_type="application/merge-patch+json",
                timeout=timeout,
            )
        except ApiError as err:
            if err.status == 404:
                with self._lock:
                    self.gone = True
                return
            log.warning("pod %s/%s: status patch failed: %s", self.namespace, self.pod_name, err)
            return
        except OSError as err:
            log.warning("pod %s/%s: status patch failed: %s", self.namespace, self.pod_name, err)
            return
        self.last_status = status
