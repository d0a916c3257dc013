"""A pod worker's probes: readiness, liveness and startup (httpGet, tcpSocket, exec)."""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import time
from typing import Any

from smtpinfra_kube import Obj

from .state import Container, Probe
from .status import PodStatusWriter


class PodProbes(PodStatusWriter):
    """Runs the containers' probes when due and acts on their verdicts."""

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

    def _run_probe(self, c: Container, probe: Probe, now: float) -> bool:
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

    def _port(self, c: Container, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"unknown named port {port}")

    def _probe_once(self, c: Container, spec: Obj, timeout: float) -> bool:
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

    def _exec_in(self, c: Container, command: list[str], timeout: float) -> int:
        """Run ``command`` in the container's mount/UTS namespaces (exec probes, preStop hooks)."""
        if c.proc is None or not command:
            return -1
        argv = ["nsenter", "-t", str(c.proc.pid), "-m", "-u", "--", *command]
        try:
            return subprocess.run(argv, env=c.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=timeout, check=False).returncode
        except (OSError, subprocess.TimeoutExpired):
            return -1
