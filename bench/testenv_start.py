"""Local test environment: control-plane `up` (cold, warm, after `down`) and pod creation → Ready.

A private control plane (fresh temp state dir, purged at the end) and the local pod runner, as the
test session fixtures start them. Measured:

* ``up`` on a fresh state dir (cold), again on the running control plane (a no-op: nothing is
  restarted), and after ``down`` (the data is kept, the processes start again);
* ``--pods`` bare pods of a local image (``smtp-infra/…``: really run by the pod runner) from
  ``kubectl apply`` to ``Ready=True``, with an HTTP readiness probe (period 1 s);
* the anchor: as many pods of an image kwok simulates (no process at all), same clock, same run.

The last line of output is JSON.

    .venv/bin/python bench/testenv_start.py [--pods 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from smtpinfra_testenv import controlplane as cpmod
from smtpinfra_testenv.podrunner import PodRunner, RunnerConfig

NAMESPACE = "bench"
LOCAL_IMAGE = "smtp-infra/bench:1"
SIMULATED_IMAGE = "registry.invalid/bench:1"
# The pod's program: /readyz answers 200 as soon as the server listens on the pod IP.
SERVER = (
    "import http.server, os\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('Content-Length', '0'); self.end_headers()\n"
    "    def log_message(self, *a):\n"
    "        pass\n"
    "http.server.ThreadingHTTPServer((os.environ['POD_IP'], 8080), H).serve_forever()\n"
)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def _pod(name: str, image: str) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image}
    if image == LOCAL_IMAGE:
        container |= {
            "command": ["python3", "-c", SERVER],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1},
        }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]}}


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or [])


def _creation_to_ready(cp: cpmod.ControlPlane, name: str, image: str) -> float:
    """Seconds from `kubectl apply` returning to the pod reporting Ready=True (polled every 0.1 s)."""
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(_pod(name, image)))
    created = time.monotonic()
    cpmod.wait_until(lambda: _ready(cp.get_json("pod", name, namespace=NAMESPACE)), timeout=120,
                     message=f"pod {name} Ready", interval=0.1)
    return time.monotonic() - created


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 2), "max": round(max(values), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=5)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bench-testenv-"))
    result: dict[str, Any] = {}
    try:
        result["up_cold_s"] = round(_timed(lambda: cpmod.up(state / "cp")), 2)
        result["up_when_running_s"] = round(_timed(lambda: cpmod.up(state / "cp")), 2)
        cpmod.down(state / "cp")
        result["up_after_down_s"] = round(_timed(lambda: cpmod.up(state / "cp")), 2)
        cp = cpmod.up(state / "cp")
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])
        runner = PodRunner(RunnerConfig(kubeconfig=cp.kubeconfig, state_dir=state / "runner", path=path))
        runner.start()
        try:
            cp.kubectl("create", "namespace", NAMESPACE)
            local = [_creation_to_ready(cp, f"local-{i}", LOCAL_IMAGE) for i in range(args.pods)]
            simulated = [_creation_to_ready(cp, f"kwok-{i}", SIMULATED_IMAGE) for i in range(args.pods)]
        finally:
            runner.stop()
        result["local_pod_ready_s"] = _summary(local)
        result["kwok_pod_ready_s"] = _summary(simulated)
        result["local_beyond_kwok_p50_s"] = round(statistics.median(local) - statistics.median(simulated), 2)
    finally:
        cpmod.down(state / "cp", purge=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
