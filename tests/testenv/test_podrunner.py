"""The local pod runner really runs pods of our images: IPs, volumes, env, probes, restarts, deletion."""

from __future__ import annotations

import functools
import http.client
import ipaddress
import itertools
import json
import re
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from smtpinfra_testenv.controlplane import ControlPlane, wait_until
from smtpinfra_testenv.podrunner import PodRunner

pytestmark = pytest.mark.testenv

IMAGE = "smtp-infra/test:1"

# The pod's program: an HTTP server bound to $(POD_IP) whose /readyz answers from a file of a
# mounted ConfigMap, and that leaves traces (boots, SIGTERM) in $DATA_DIR when that is mounted.
SERVER = r"""
import http.server, json, os, pathlib, signal, socket, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
conf = pathlib.Path("/run/smtp-infra-podtest/config")
data = pathlib.Path(os.environ.get("DATA_DIR", "/nonexistent"))
me = os.environ["POD_NAME"]
if data.is_dir():
    with (data / "boots").open("a") as fh:
        fh.write(f"{me} {os.getpid()}\n")

def on_term(*_):
    if data.is_dir():
        (data / f"sigterm-{me}").write_text(str(time.time()))
    os._exit(0)

signal.signal(signal.SIGTERM, on_term)

class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, body):
        raw = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):
        if self.path == "/readyz":
            ok = (conf / "ready").read_text().strip() == "yes"
            return self.reply(200 if ok else 503, "ok" if ok else "not ready")
        if self.path == "/info":
            try:
                pathlib.Path("/run/smtp-infra-podtest/secret/probe-write").write_text("x")
                secret_writable = True
            except OSError:
                secret_writable = False
            return self.reply(200, json.dumps({
                "env": dict(os.environ),
                "argv": sys.argv,
                "config": (conf / "message").read_text(),
                "secret": pathlib.Path("/run/smtp-infra-podtest/secret/password").read_text(),
                "secret_writable": secret_writable,
                "hostname": socket.gethostname(),
                "token": pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/token").is_file(),
                "labels": pathlib.Path("/run/smtp-infra-podtest/podinfo/labels").read_text(),
            }))
        return self.reply(404, "no")

http.server.ThreadingHTTPServer((ip, port), Handler).serve_forever()
"""


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"podrunner-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _apply(cp: ControlPlane, *objs: dict[str, Any]) -> None:
    cp.kubectl("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(o) for o in objs))


def _condition(pod: dict[str, Any], kind: str) -> str | None:
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond["type"] == kind:
            return str(cond["status"])
    return None


def _pods(cp: ControlPlane, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cp.get_json("pods", "-l", selector, namespace=namespace)["items"]
    return items


def _http(ip: str, path: str, port: int = 8080) -> tuple[int, str]:
    conn = http.client.HTTPConnection(ip, port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _sources(cp: ControlPlane, namespace: str, ready: str) -> None:
    _apply(
        cp,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "podtest", "namespace": namespace},
            "data": {"server.py": SERVER, "ready": ready, "message": "first"},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "podtest-env", "namespace": namespace},
            "data": {"GREETING": "hello"},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "podtest", "namespace": namespace},
            "stringData": {"password": "s3cret"},
        },
    )


def _pod_template(app: str, *, data_volume: bool = False) -> dict[str, Any]:
    mounts = [
        {"name": "config", "mountPath": "/run/smtp-infra-podtest/config"},
        {"name": "secret", "mountPath": "/run/smtp-infra-podtest/secret", "readOnly": True},
        {"name": "podinfo", "mountPath": "/run/smtp-infra-podtest/podinfo"},
    ]
    env = []
    if data_volume:
        # Pods see the host's filesystem except where volumes are mounted: only use what is mounted.
        mounts.append({"name": "data", "mountPath": "/run/smtp-infra-podtest/data"})
        env.append({"name": "DATA_DIR", "value": "/run/smtp-infra-podtest/data"})
    return {
        "metadata": {"labels": {"app": app}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "server",
                    "image": IMAGE,
                    "command": ["python3", "/run/smtp-infra-podtest/config/server.py"],
                    "args": ["$(POD_IP)", "8080", "$$(POD_IP)"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "envFrom": [{"configMapRef": {"name": "podtest-env"}}],
                    "env": [
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "podtest", "key": "password"}}},
                        {"name": "MESSAGE", "valueFrom": {"configMapKeyRef": {"name": "podtest", "key": "message"}}},
                        {"name": "GREETING_TO", "value": "$(GREETING) $(POD_NAME) $(UNDEFINED)"},
                        *env,
                    ],
                    "readinessProbe": {
                        "httpGet": {"path": "/readyz", "port": "http"},
                        "periodSeconds": 1,
                        "failureThreshold": 1,
                    },
                    "volumeMounts": mounts,
                }
            ],
            "volumes": [
                {"name": "config", "configMap": {"name": "podtest"}},
                {"name": "secret", "secret": {"secretName": "podtest"}},
                {
                    "name": "podinfo",
                    "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
                },
            ],
        },
    }


# --------------------------------------------------------------------------------------------
# On the local control plane


def test_deployment_really_runs_with_env_volumes_and_readiness(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    _sources(control_plane, namespace, ready="no")
    created = time.monotonic()
    _apply(
        control_plane,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": _pod_template("web")},
        },
    )

    def running() -> list[dict[str, Any]] | None:
        pods = _pods(control_plane, namespace, "app=web")
        ok = len(pods) == 2 and all(
            p["status"].get("phase") == "Running"
            and (p["status"].get("containerStatuses") or [{}])[0].get("state", {}).get("running")
            for p in pods
        )
        return pods if ok else None

    pods = wait_until(running, timeout=60, message="2 pods Running")
    ips = [p["status"]["podIP"] for p in pods]
    assert len(set(ips)) == 2
    for pod, ip in zip(pods, ips, strict=True):
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(pod_runner.config.pod_cidr), ip
        assert [x["ip"] for x in pod["status"]["podIPs"]] == [ip]
        assert pod["status"]["hostIP"] == "127.0.0.1"
        assert pod["spec"]["nodeName"].startswith("kwok-node-")
        # The real process listens on the pod IP and says it is not ready (file says "no") ...
        answer = wait_until(functools.partial(_try_http, ip, "/readyz"), timeout=20, message=f"{ip}:8080 answers")
        assert answer == (503, "not ready")
    # ... so the readiness probe keeps Ready False.
    time.sleep(2.5)
    for pod in _pods(control_plane, namespace, "app=web"):
        assert _condition(pod, "Ready") == "False", pod["status"]
        assert pod["status"]["containerStatuses"][0]["ready"] is False
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0

    # Flip the ConfigMap: the mounted file changes within seconds and the probe makes the pods Ready.
    flipped = time.monotonic()
    control_plane.kubectl(
        "patch", "configmap", "podtest", "-n", namespace, "--type=merge", "-p",
        json.dumps({"data": {"ready": "yes", "message": "second"}}),
    )
    for ip in ips:
        wait_until(functools.partial(_answers, ip, "/readyz", (200, "ok")), timeout=10,
                   message=f"{ip} sees the updated ConfigMap")
    print(f"ConfigMap change visible in the pods after {time.monotonic() - flipped:.1f}s")

    def ready() -> bool:
        pods = _pods(control_plane, namespace, "app=web")
        return len(pods) == 2 and all(_condition(p, "Ready") == "True" for p in pods)

    wait_until(ready, timeout=15, message="both pods Ready")
    print(f"pods Ready {time.monotonic() - created:.1f}s after the Deployment was created")
    for pod in _pods(control_plane, namespace, "app=web"):
        assert _condition(pod, "ContainersReady") == "True"
        assert _condition(pod, "Initialized") == "True"
        assert _condition(pod, "PodScheduled") == "True"
    deployment = control_plane.get_json("deployment", "web", namespace=namespace)
    wait_until(
        lambda: control_plane.get_json("deployment", "web", namespace=namespace)["status"].get("readyReplicas") == 2,
        timeout=15,
        message=f"deployment readyReplicas 2: {deployment.get('status')}",
    )

    pod = pods[0]
    status, body = _http(pod["status"]["podIP"], "/info")
    assert status == 200
    info = json.loads(body)
    env = info["env"]
    assert env["POD_IP"] == pod["status"]["podIP"]
    assert env["POD_NAME"] == pod["metadata"]["name"]
    assert env["POD_NS"] == namespace
    assert env["NODE"] == pod["spec"]["nodeName"]
    assert env["PASSWORD"] == "s3cret"
    assert env["MESSAGE"] == "first"  # env is fixed at container start, files follow the ConfigMap
    assert env["GREETING"] == "hello"
    assert env["GREETING_TO"] == f"hello {pod['metadata']['name']} $(UNDEFINED)"
    assert info["argv"][1:] == [pod["status"]["podIP"], "8080", "$(POD_IP)"]
    assert info["config"] == "second"
    assert info["secret"] == "s3cret"
    assert info["secret_writable"] is False  # readOnly mount
    assert info["hostname"] == pod["metadata"]["name"]
    assert info["token"] is True  # the ServiceAccount admission's projected token volume works
    assert 'app="web"' in info["labels"]
    log_file = pod_runner.log_path(namespace, pod["metadata"]["name"], "server")
    assert log_file.exists()


def _answers(ip: str, path: str, expected: tuple[int, str]) -> bool:
    return _try_http(ip, path) == expected


def _try_http(ip: str, path: str) -> tuple[int, str] | None:
    try:
        return _http(ip, path)
    except OSError:
        return None


def test_statefulset_volume_survives_and_deletion_sends_sigterm(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    _sources(control_plane, namespace, ready="yes")
    created = time.monotonic()
    _apply(
        control_plane,
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": namespace},
            "spec": {
                "replicas": 1,
                "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "template": _pod_template("db", data_volume=True),
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                    }
                ],
            },
        },
    )

    def ready_pod() -> dict[str, Any] | None:
        pods = _pods(control_plane, namespace, "app=db")
        return pods[0] if len(pods) == 1 and _condition(pods[0], "Ready") == "True" else None

    first = wait_until(ready_pod, timeout=60, message="db-0 Ready")
    print(f"StatefulSet pod (with a claim to bind) Ready {time.monotonic() - created:.1f}s after creation")
    claim = control_plane.get_json("pvc", "data-db-0", namespace=namespace)
    assert claim["status"]["phase"] == "Bound"
    data = pod_runner.claim_dir(namespace, "data-db-0")
    boots = data / "boots"
    assert boots.read_text().splitlines()[0].startswith("db-0 ")
    (data / "kept").write_text("across pods")
    first_ip = first["status"]["podIP"]

    deleted = time.monotonic()
    control_plane.kubectl("delete", "pod", "db-0", "-n", namespace, "--wait=false")
    marker = data / "sigterm-db-0"
    wait_until(marker.exists, timeout=15, message="the process saw SIGTERM (marker in the claim dir)")

    def recreated() -> dict[str, Any] | None:
        pod = ready_pod()
        return pod if pod and pod["metadata"]["uid"] != first["metadata"]["uid"] else None

    second = wait_until(recreated, timeout=60, message="db-0 recreated and Ready")
    print(f"db-0 deleted, SIGTERMed, recreated and Ready again in {time.monotonic() - deleted:.1f}s")
    assert (data / "kept").read_text() == "across pods"
    assert len(boots.read_text().splitlines()) == 2
    assert second["status"]["podIP"] == first_ip  # stable per pod name
    # The old process is really gone: only one server answers, and it is the new one.
    _status, body = _http(first_ip, "/info")
    assert json.loads(body)["env"]["POD_NAME"] == "db-0"
    old_pid = int(boots.read_text().splitlines()[0].split()[1])
    assert not Path(f"/proc/{old_pid}").exists()


def test_crashing_container_is_restarted_with_backoff(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    """Between restarts the container waits in CrashLoopBackOff, and the wait doubles with each crash."""
    _apply(
        control_plane,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "crasher", "namespace": namespace},
            "spec": {
                "containers": [
                    {"name": "main", "image": IMAGE, "command": ["python3", "-c", "print('boom', flush=True); exit(3)"]}
                ]
            },
        },
    )
    backoffs: dict[int, float] = {}  # restartCount -> the back-off the runner reported while waiting

    def waited_twice() -> dict[str, Any] | None:
        pod = control_plane.get_json("pod", "crasher", namespace=namespace)
        status = (pod["status"].get("containerStatuses") or [{}])[0]
        waiting = status.get("state", {}).get("waiting", {})
        if waiting.get("reason") == "CrashLoopBackOff":
            m = re.match(r"back-off (\d+(?:\.\d+)?)s ", waiting.get("message", ""))
            assert m, waiting
            backoffs[status["restartCount"]] = float(m.group(1))
        return pod if len(backoffs) >= 2 else None

    pod = wait_until(waited_twice, timeout=90, message="two CrashLoopBackOff waits seen", interval=0.2)
    counts = sorted(backoffs)
    delays = [backoffs[n] for n in counts]
    assert all(a < b for a, b in itertools.pairwise(delays)), f"back-off does not grow: {backoffs}"
    assert delays[-1] >= 2 * pod_runner.config.backoff_base, backoffs
    status = pod["status"]["containerStatuses"][0]
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert pod["status"]["phase"] == "Running"
    assert _condition(pod, "Ready") == "False"
    log_text = pod_runner.log_path(namespace, "crasher", "main").read_text()
    assert log_text.count("boom") >= counts[-1]  # one run before each back-off


def test_liveness_failure_restarts_the_process(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    script = "import os, socket, time; s = socket.socket(); s.bind((os.environ['IP'], 9000)); time.sleep(3600)"
    _apply(
        control_plane,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "deaf", "namespace": namespace},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "main",
                        "image": IMAGE,
                        "command": ["python3", "-c", script],
                        "env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                        # Bound but never listening: every TCP probe fails.
                        "livenessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 1, "failureThreshold": 2},
                    }
                ],
            },
        },
    )

    def restarted() -> dict[str, Any] | None:
        pod = control_plane.get_json("pod", "deaf", namespace=namespace)
        status: dict[str, Any] = (pod["status"].get("containerStatuses") or [{}])[0]
        return status if status.get("restartCount", 0) >= 1 and status.get("lastState", {}).get("terminated") else None

    status = wait_until(restarted, timeout=30, message="liveness failure restarted the container")
    # the process sleeps for an hour: it only ends because the failing probe had it killed
    terminated = status["lastState"]["terminated"]
    assert terminated["signal"] in (signal.SIGTERM, signal.SIGKILL), terminated
    assert terminated["exitCode"] == 128 + terminated["signal"], terminated


def test_other_images_are_still_simulated_by_kwok(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    _apply(
        control_plane,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "fake", "namespace": namespace},
            "spec": {"containers": [{"name": "main", "image": "registry.invalid/other:1"}]},
        },
    )

    def running() -> dict[str, Any] | None:
        pod: dict[str, Any] = control_plane.get_json("pod", "fake", namespace=namespace)
        return pod if pod["status"].get("phase") == "Running" and pod["status"].get("podIP") else None

    pod = wait_until(running, timeout=30, message="kwok pod Running")
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(control_plane.pod_cidr)
    assert pod["metadata"]["uid"] not in pod_runner.workers
    assert not pod_runner.log_path(namespace, "fake", "main").exists()
    control_plane.kubectl("delete", "pod", "fake", "-n", namespace, "--wait=true", "--timeout=30s")


def test_pod_ip_is_really_local(pod_runner: PodRunner) -> None:
    """Premise: any address of the runner's CIDR can be bound (loopback on Linux)."""
    address = str(ipaddress.ip_network(pod_runner.config.pod_cidr)[12345])
    with socket.socket() as s:
        s.bind((address, 0))
        assert s.getsockname()[0] == address
