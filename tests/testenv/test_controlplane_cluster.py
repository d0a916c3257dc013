"""The session control plane behaves like a real cluster: nodes, scheduling, controllers, auth."""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import ssl
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from smtpinfra_testenv.controlplane import ControlPlane, KubectlError, wait_until

pytestmark = pytest.mark.testenv


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A throwaway namespace, so tests can share the session cluster (and a demo cluster)."""
    name = f"testenv-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _condition(obj: dict[str, Any], kind: str) -> str | None:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind:
            return str(cond.get("status"))
    return None


def test_simulated_node_is_ready_and_schedulable(control_plane: ControlPlane) -> None:
    nodes = control_plane.get_json("nodes")["items"]
    kwok_nodes = [n for n in nodes if n["metadata"].get("annotations", {}).get("kwok.x-k8s.io/node") == "fake"]
    assert kwok_nodes, f"no kwok-managed node among {[n['metadata']['name'] for n in nodes]}"
    for node in kwok_nodes:
        assert _condition(node, "Ready") == "True", node["status"]
        blocking = [t for t in node["spec"].get("taints") or [] if t["effect"] in ("NoSchedule", "NoExecute")]
        assert not blocking, f"{node['metadata']['name']} still tainted: {blocking}"
    if control_plane.state_dir is not None:
        assert {n["metadata"]["name"] for n in kwok_nodes} >= set(control_plane.node_names)


def test_plain_pod_is_scheduled_and_runs_with_a_pod_cidr_ip(control_plane: ControlPlane, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "namespace": namespace},
        # kwok never pulls, so any image name works; the point is scheduling and status.
        "spec": {"containers": [{"name": "main", "image": "registry.invalid/nothing:1"}]},
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(pod))

    def running() -> dict[str, Any] | None:
        obj: dict[str, Any] = control_plane.get_json("pod", "probe", namespace=namespace)
        return obj if obj["status"].get("phase") == "Running" and obj["status"].get("podIP") else None

    obj = wait_until(running, timeout=60, message="pod probe Running with a podIP")
    assert obj["spec"]["nodeName"].startswith("kwok-node-")
    assert _condition(obj, "Ready") == "True"
    pod_ip = ipaddress.ip_address(obj["status"]["podIP"])
    cidr = ipaddress.ip_network(control_plane.pod_cidr)
    assert pod_ip in cidr, f"{pod_ip} not in {cidr}"
    assert [p["ip"] for p in obj["status"]["podIPs"]] == [str(pod_ip)]
    if cidr.is_loopback:
        # The premise of the local pod runner: a process can listen on the pod's own IP.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((str(pod_ip), 0))
            s.listen()
            with socket.create_connection(s.getsockname(), timeout=5):
                conn, _peer = s.accept()
                conn.close()


def test_pod_ips_are_unique(control_plane: ControlPlane, namespace: str) -> None:
    for i in range(3):
        control_plane.kubectl("run", f"p{i}", "--image=registry.invalid/nothing:1", "--restart=Never", "-n", namespace)

    def ips() -> list[str] | None:
        items = control_plane.get_json("pods", namespace=namespace)["items"]
        found = [p["status"].get("podIP") for p in items if p["status"].get("phase") == "Running"]
        return found if len(found) == 3 and all(found) else None

    found = wait_until(ips, timeout=60, message="3 pods Running")
    assert len(set(found)) == 3, found


def test_deployment_controllers_and_garbage_collection(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl(
        "create", "deployment", "web", "--image=registry.invalid/web:1", "--replicas=3", "-n", namespace
    )
    deploy = control_plane.get_json("deployment", "web", namespace=namespace)

    def owned_replicaset() -> dict[str, Any] | None:
        for rs in control_plane.get_json("replicasets", namespace=namespace)["items"]:
            owners = rs["metadata"].get("ownerReferences") or []
            if any(o["uid"] == deploy["metadata"]["uid"] and o["kind"] == "Deployment" for o in owners):
                return dict(rs)
        return None

    rs = wait_until(owned_replicaset, timeout=60, message="ReplicaSet owned by deployment web")

    def running_pods() -> list[dict[str, Any]] | None:
        pods = control_plane.get_json("pods", "-l", "app=web", namespace=namespace)["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        return running if len(running) == 3 else None

    pods = wait_until(running_pods, timeout=60, message="3 Running pods of deployment web")
    for pod in pods:
        assert [o["uid"] for o in pod["metadata"]["ownerReferences"]] == [rs["metadata"]["uid"]]

    def available() -> bool:
        status = control_plane.get_json("deployment", "web", namespace=namespace)["status"]
        return bool(status.get("availableReplicas") == 3)

    wait_until(available, timeout=60, message="deployment web reports 3 available replicas")

    # The garbage collector (kube-controller-manager) removes the ReplicaSet, then the pods.
    control_plane.kubectl("delete", "deployment", "web", "-n", namespace, "--wait=false")

    def all_gone() -> bool:
        left = control_plane.get_json("replicasets,pods", namespace=namespace)["items"]
        return not left

    wait_until(all_gone, timeout=60, message="ReplicaSet and pods garbage-collected")


def test_service_account_tokens_are_signed_by_the_configured_issuer(control_plane: ControlPlane) -> None:
    token = control_plane.kubectl("create", "token", "default", "-n", "default").stdout.strip()
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == "system:serviceaccount:default:default"
    if control_plane.state_dir is not None:
        assert claims["iss"] == "https://kubernetes.default.svc.cluster.local"

    # The token authenticates: the API server verifies its own signature (and rejects a forgery).
    def review(tok: str) -> dict[str, Any]:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": tok}}
        out = control_plane.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(body)).stdout
        status: dict[str, Any] = json.loads(out)["status"]
        return status

    good = review(token)
    assert good.get("authenticated") is True, good
    assert good["user"]["username"] == claims["sub"]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert not review(forged).get("authenticated")


def test_rbac_is_enforced(control_plane: ControlPlane) -> None:
    """The default ServiceAccount has no rights: authorization is real, not AlwaysAllow."""
    out = control_plane.kubectl(
        "auth", "can-i", "list", "secrets", "--as=system:serviceaccount:default:default", check=False
    )
    assert out.stdout.strip() == "no"
    admin = control_plane.kubectl("auth", "can-i", "list", "secrets", "--all-namespaces")
    assert admin.stdout.strip() == "yes"


def test_endpoints_refuse_loopback_addresses(control_plane: ControlPlane, namespace: str) -> None:
    """Documents the API-server rule the pod runner has to live with (see README)."""
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "loop", "namespace": namespace},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.65.0.9"]}],
        "ports": [{"port": 25}],
    }
    with pytest.raises(KubectlError, match="loopback"):
        control_plane.kubectl("create", "-f", "-", input=json.dumps(slice_))


def test_serving_certificate_covers_in_cluster_names(control_plane: ControlPlane) -> None:
    if control_plane.state_dir is None:
        pytest.skip("attached to a cluster this module did not create")
    url = urlsplit(control_plane.server)
    ca = control_plane.state_dir / "pki" / "ca.crt"
    ctx = ssl.create_default_context(cafile=str(ca))
    for name in ("kubernetes.default.svc.cluster.local", "kubernetes.default.svc", "localhost", "10.96.0.1"):
        with (
            socket.create_connection((url.hostname, url.port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=name),
        ):
            pass
    with (
        pytest.raises(ssl.SSLCertVerificationError),
        socket.create_connection((url.hostname, url.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="not-the-apiserver.example"),
    ):
        pass
