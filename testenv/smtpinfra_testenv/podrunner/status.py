"""A pod worker's status: containerStatuses, conditions and phase, patched like the kubelet."""

from __future__ import annotations

import logging

import httpx

from smtpinfra_kube import ApiError, Obj

from .processes import PodProcesses
from .state import Container, now_rfc3339

log = logging.getLogger(__name__)


class PodStatusWriter(PodProcesses):
    """Reports the pod's status; only writes when it changed."""

    def _container_status(self, c: Container) -> Obj:
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
            prev = (value, now_rfc3339())
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
                body={"metadata": {"uid": self.uid}, "status": status},
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
        except (httpx.HTTPError, OSError) as err:
            log.warning("pod %s/%s: status patch failed: %s", self.namespace, self.pod_name, err)
            return
        self.last_status = status
