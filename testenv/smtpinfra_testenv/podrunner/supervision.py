"""A pod worker's supervision: restart policy, crash back-off, termination with grace."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

from smtpinfra_kube import ApiError, Obj

from .kube import KUBE_ERRORS
from .probes import PodProbes
from .state import KUBELET_DEFAULT_GRACE, Container

log = logging.getLogger(__name__)


class PodSupervision(PodProbes):
    """Starts, restarts and terminates the containers as the pod's restartPolicy says."""

    def _reap(self, pod: Obj, c: Container) -> None:
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

    def _kill_for_restart(self, pod: Obj, c: Container, why: str) -> None:
        log.info("pod %s/%s: container %s: %s, restarting", self.namespace, self.pod_name, c.name, why)
        c.kill_reason = "Error"
        grace = float(pod["spec"].get("terminationGracePeriodSeconds", KUBELET_DEFAULT_GRACE))
        self._terminate([c], min(grace, self.runner.config.max_grace))
        if c.proc is not None:
            self._reap(pod, c)
            if not c.done:
                c.next_start = time.monotonic()  # liveness restarts are not crash-looping
                c.state = {"waiting": {"reason": "ContainerCreating", "message": why}}

    def _terminate(self, containers: list[Container], grace: float) -> None:
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
        return min(float(grace if grace is not None else KUBELET_DEFAULT_GRACE), self.runner.config.max_grace)

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
                self.client.request("DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}", body=body)
            except ApiError as err:
                if err.status not in (404, 409):  # gone already, or a newer pod of the same name
                    log.warning("pod %s/%s: final delete failed: %s", self.namespace, self.pod_name, err)
            except KUBE_ERRORS as err:
                log.warning("pod %s/%s: final delete failed: %s", self.namespace, self.pod_name, err)
        else:
            for c in self.containers:
                c.ready = False
            with contextlib.suppress(*KUBE_ERRORS):
                self._patch_status(pod, timeout=3.0)
