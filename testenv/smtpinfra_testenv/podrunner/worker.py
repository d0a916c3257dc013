"""One pod from binding to deletion, run by its own thread (a tiny kubelet)."""

from __future__ import annotations

import logging
import shutil
import threading
import time

from smtpinfra_kube import Obj

from .state import TICK, Container, NotReadyError, RunnerHost, now_rfc3339
from .supervision import PodSupervision

log = logging.getLogger(__name__)


class PodWorker(PodSupervision, threading.Thread):
    """Runs one pod from binding to deletion: volumes, processes, probes, status (a tiny kubelet)."""

    def __init__(self, runner: RunnerHost, pod: Obj) -> None:
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
        self.start_time = now_rfc3339()
        self.init_containers = [Container(c, init=True) for c in pod["spec"].get("initContainers") or []]
        self.containers = [Container(c) for c in pod["spec"].get("containers") or []]
        self.volumes_ready = False
        self.volume_error: NotReadyError | None = None
        self.next_volume_sync = 0.0
        self.tokens: dict[str, tuple[str, float]] = {}  # volume/path -> (token, refresh at)
        self.last_status: Obj | None = None
        self.transitions: dict[str, tuple[str, str]] = {}
        self.failed_phase: str | None = None
        self.hosts_seen = -1
        previous = {s["name"]: s for s in (pod.get("status", {}).get("containerStatuses") or [])}
        for c in self.containers:
            # A pod we ran before the runner restarted: its process is gone, count it as a restart.
            prev = previous.get(c.name)
            if prev:
                started = bool({"running", "terminated"} & set(prev.get("state") or {}))
                c.restart_count = int(prev.get("restartCount", 0)) + int(started)

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
        self.start_time = pod.get("status", {}).get("startTime") or now_rfc3339()
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
                if any(c.running for c in self.containers):
                    self.refresh_hosts(pod)
                self._step_containers(pod)
                self._step_probes(pod)
            self._patch_status(pod)
            self._wake.wait(TICK)
            self._wake.clear()
