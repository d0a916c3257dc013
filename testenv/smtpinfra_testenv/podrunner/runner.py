"""The runner: watches pods, starts a worker for each local one, binds their claims."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from smtpinfra_kube import Client, KubeConfig, Obj, object_key

from .claims import ClaimBinder, claim_names
from .config import RunnerConfig
from .images import is_local_pod
from .ipalloc import IpAllocator
from .servicedns import hosts_lines, pod_names, service_endpoints
from .worker import PodWorker

log = logging.getLogger(__name__)

USER_AGENT = "smtp-infra-pod-runner"


class PodRunner:
    """Watches pods and runs the local ones; ``start()``/``stop()``, or use as a context manager."""

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir.absolute()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.client = Client(KubeConfig.from_kubeconfig(config.kubeconfig), user_agent=USER_AGENT)
        self.ips = IpAllocator(config.pod_cidr)
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.node_ips: dict[str, str] = {}
        self._lock_fh: Any = None
        self.binder = ClaimBinder(self.client, lambda ns, name: self.claims.get(ns, name), self.claim_dir,
                                  self.stopping)
        self.pods = self.client.collection("/api/v1/pods", name="pods", listener=self._on_pod)
        self.configmaps = self.client.collection("/api/v1/configmaps", name="configmaps", listener=self._on_source)
        self.secrets = self.client.collection("/api/v1/secrets", name="secrets", listener=self._on_source)
        self.claims = self.client.collection("/api/v1/persistentvolumeclaims", name="pvcs",
                                             listener=self.binder.on_claim)
        self.nodes = self.client.collection("/api/v1/nodes", name="nodes", listener=self._on_node)
        self.services = self.client.collection("/api/v1/services", name="services", listener=self._on_service)
        self.hosts_version = 0
        """Bumped when a Service or pod changes: workers then rewrite the Service names in /etc/hosts."""

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
        for r in (self.nodes, self.configmaps, self.secrets, self.claims, self.services):
            r.start()
        deadline = time.monotonic() + timeout
        for r in (self.nodes, self.configmaps, self.secrets, self.claims, self.services):
            if not r.synced.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"{r.name} did not sync within {timeout}s")
        self.binder.start()
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
        for r in (self.pods, self.configmaps, self.secrets, self.claims, self.nodes, self.services):
            r.stop()
        self.client.close()
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

    def running_pids(self, namespace: str, name_prefix: str = "") -> dict[str, int]:
        """Pod name → the main process of its first running container, for the pods of `namespace` whose
        names start with `name_prefix`: how a test kills a pod's process as a node failure would."""
        with self.lock:
            workers = [w for w in self.workers.values() if w.namespace == namespace
                       and w.pod_name.startswith(name_prefix)]
        found: dict[str, int] = {}
        for worker in workers:
            proc = next((c.proc for c in worker.containers if c.proc is not None and c.proc.poll() is None), None)
            if proc is not None:
                found[worker.pod_name] = proc.pid
        return found

    # -- events

    def _wants(self, pod: Obj) -> bool:
        return is_local_pod(pod, self.config.image_prefixes)

    def _on_pod(self, kind: str, pod: Obj) -> None:
        self._bump_hosts()
        if not self._wants(pod):
            return
        uid = str(pod["metadata"]["uid"])
        ns = object_key(pod)[0]
        if kind != "DELETED" and not pod["metadata"].get("deletionTimestamp"):
            for claim in claim_names(pod):
                self.binder.want(ns, claim)
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

    def _on_service(self, kind: str, svc: Obj) -> None:
        self._bump_hosts()

    def _bump_hosts(self) -> None:
        with self.lock:
            self.hosts_version += 1

    def service_hosts(self, namespace: str) -> list[str]:
        """/etc/hosts lines for the Services of the cluster (the stand-in for cluster DNS + kube-proxy)."""
        services, pods = self.services.items(), self.pods.items()
        return hosts_lines(service_endpoints(services, pods), namespace, pod_names(services, pods))

    def _on_node(self, kind: str, node: Obj) -> None:
        for addr in node.get("status", {}).get("addresses") or []:
            if addr.get("type") == "InternalIP":
                with self.lock:
                    self.node_ips[node["metadata"]["name"]] = str(addr["address"])

    def worker_done(self, uid: str) -> None:
        with self.lock:
            self.workers.pop(uid, None)
