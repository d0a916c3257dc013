"""A standby replica of a peering writes nothing, whatever it sees; it takes over when the active one is gone.

Two operators in one Kopf peering against the real control plane, whose API server keeps an audit
log (testenv): every request with its verb, resource and the client's user agent. Our client sends
`smtp-infra-operator/<identity>`, Kopf's own `kopf/<version>`. The active replica is frozen with
SIGSTOP right after one of its keep-alives, so its keep-alive still counts; meanwhile a child of a
Ready SmtpServer is deleted, a Tenant it serves changes and one of its pods is deleted. The
standby sees all of it (its queues say so in its log) and sends no write request: the audit log
has none from it, nor any from Kopf (the frozen replica sends nothing at all), except Kopf's
keep-alives of the ClusterKopfPeering object, which are how replicas agree and not reconciliation.
When the frozen replica's keep-alive expires, the standby takes over and restores the child.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.kube import KUBE_VERSION, ROOT, OperatorProcess, apply, condition, find, helm, wait_for

pytestmark = pytest.mark.operator

NS = "standby-test"
SERVER = "watched"
POOL = "standby-pool"
TENANT = "standby-tenant"
PEERING = "standby-peering"
LIFETIME = 40
"""Seconds a keep-alive counts: long enough for the changes below to happen inside it."""
WINDOW = 15
"""Seconds of keep-alive the frozen replica must have left when it is frozen."""
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
IMAGE = "registry.example.test/mta:1"
"""Not an image of ours: kwok runs the pods, Ready at once."""


class Replica(OperatorProcess):
    """One peered `smtp-infra operator run` with a fixed identity (POD_ID) and priority."""

    def __init__(self, cp: Any, log_path: Path, identity: str, priority: int) -> None:
        super().__init__(cp, log_path, env={"SMTP_INFRA_PEERING_LIFETIME": str(LIFETIME), "POD_ID": identity,
                                            "SMTP_INFRA_RESYNC_SECONDS": "2",
                                            "SMTP_INFRA_DEBUG": "1"})  # each parked key is logged at DEBUG
        self.identity, self.priority = identity, priority

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "smtpinfra_cli", "operator", "run", "--kubeconfig", str(self.cp.kubeconfig),
             "--peering", PEERING, "--priority", str(self.priority)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        super().stop()


def spool_volumes(cp: Any, count: int) -> None:
    """Volumes pre-bound to the server's spool claims: nothing provisions volumes here, and the
    scheduler keeps a pod with an unbound claim Pending."""
    for ordinal in range(count):
        claim = f"spool-{SERVER}-{ordinal}"
        apply(cp, {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{NS}-{claim}"},
                   "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                            "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/tmp/{NS}-{claim}"},
                            "claimRef": {"namespace": NS, "name": claim}}})


def ready(cp: Any, resource: str, name: str, namespace: str | None = None) -> bool:
    obj = find(cp, resource, name, namespace)
    cond = condition(obj, "Ready") if obj else None
    return bool(cond and cond["status"] == "True")


def keepalive_left(cp: Any, identity: str) -> float:
    """Seconds until `identity`'s last keep-alive in the peering object expires (negative: expired)."""
    peers = (find(cp, "clusterkopfpeering", PEERING) or {}).get("status") or {}
    info = peers.get(identity)
    if not isinstance(info, dict):
        return -1.0
    seen = datetime.fromisoformat(str(info["lastseen"]).replace("Z", "+00:00"))
    return (seen.timestamp() + int(info["lifetime"])) - datetime.now(UTC).timestamp()


def audit_since(path: Path, offset: int) -> list[dict[str, Any]]:
    with path.open("rb") as fh:
        fh.seek(offset)
        return [json.loads(line) for line in fh.read().splitlines() if line.strip()]


def operator_writes(events: list[dict[str, Any]], identity: str) -> list[str]:
    """Write requests by the replica `identity` or by Kopf, other than the peering's keep-alives."""
    found = []
    for event in events:
        agent = event.get("userAgent", "")
        ref = event.get("objectRef") or {}
        if event.get("verb") not in WRITE_VERBS or ref.get("resource") == "clusterkopfpeerings":
            continue
        if agent.startswith(f"smtp-infra-operator/{identity}") or agent.startswith("kopf/"):
            found.append(f"{event['verb']} {event.get('requestURI')} ({agent})")
    return found


@pytest.fixture(scope="module")
def world(crds: Any, tls_files: Any) -> Any:
    cp = crds
    assert cp.audit_log is not None and cp.audit_log.exists(), "the test control plane keeps an audit log"
    rendered = helm(cp, "template", "x", str(ROOT / "charts" / "smtp-infra"), "--kube-version", KUBE_VERSION,
                    "--set", f"peering.name={PEERING}", "--show-only", "templates/peering-crd.yaml").stdout
    apply(cp, rendered)
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/clusterkopfpeerings.kopf.dev")
    cp.kubectl("create", "namespace", NS, check=False)
    spool_volumes(cp, 2)
    cert, key = tls_files
    cp.kubectl("-n", NS, "create", "secret", "tls", "watched-tls", f"--cert={cert}", f"--key={key}", check=False)
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": POOL},
               "spec": {"addresses": ["127.0.31.1", "127.0.31.2"], "ptrTemplate": "mta-{index}.standby.example.test"}})
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Tenant",
               "metadata": {"name": TENANT, "labels": {"standby": "yes"}},
               "spec": {"displayName": "Standby", "senderDomains": ["standby.example.test"]}})
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "SmtpServer",
               "metadata": {"name": SERVER, "namespace": NS},
               "spec": {"hostname": "watched.standby.example.test", "returnPathDomain": "bounces.standby.example.test",
                        "replicas": 2, "ipPools": [POOL], "image": IMAGE,
                        "tls": {"secretName": "watched-tls"}, "dns": {"provider": "none"},
                        "tenantSelector": {"matchLabels": {"standby": "yes"}}}})
    yield cp
    cp.kubectl("-n", NS, "delete", "smtpserver", SERVER, "--wait=false", check=False)
    cp.kubectl("delete", "tenant", TENANT, "--wait=false", check=False)
    cp.kubectl("delete", "ippool", POOL, "--wait=false", check=False)
    cp.kubectl("delete", "clusterkopfpeering", PEERING, "--ignore-not-found", check=False)


def test_a_paused_standby_writes_nothing_and_takes_over_when_the_keepalive_expires(world, tmp_path):
    cp = world
    active = Replica(cp, tmp_path / "active.log", "standby-active", priority=200)
    standby = Replica(cp, tmp_path / "standby.log", "standby-passive", priority=100)
    active.start()
    try:
        wait_for(lambda: ready(cp, "smtpserver", SERVER, NS) and ready(cp, "ippool", POOL)
                 and ready(cp, "tenant", TENANT), timeout=120, what="server, pool and tenant Ready")
        standby.start()
        wait_for(lambda: keepalive_left(cp, standby.identity) > 0, timeout=60, what="the standby in the peering")
        wait_for(lambda: "resync paused: another replica is active" in standby.log(), timeout=60,
                 what="the standby pausing")
        # Freeze the active replica while its keep-alive has WINDOW seconds or more left.
        wait_for(lambda: keepalive_left(cp, active.identity) > WINDOW + 5, timeout=LIFETIME + 30, interval=0.5,
                 what="a fresh keep-alive of the active replica")
        assert active.process is not None
        active.process.send_signal(signal.SIGSTOP)
        frozen_until = time.monotonic() + keepalive_left(cp, active.identity)
        time.sleep(0.5)  # requests the active replica had on the wire are logged before the offset
        assert cp.audit_log is not None
        offset = cp.audit_log.stat().st_size

        child = f"service/{SERVER}-inbound"
        cp.kubectl("-n", NS, "delete", child, "--wait=true")
        cp.kubectl("patch", "tenant", TENANT, "--type=merge", "-p", '{"spec":{"displayName":"Standby 2"}}')
        cp.kubectl("-n", NS, "delete", "pod", f"{SERVER}-0", "--wait=false")
        # The standby saw the changes (its queues park what they were asked to do) ...
        wait_for(lambda: "reconciles wait: another replica of the peering is active" in standby.log(), timeout=10,
                 what="the standby's queues parking the changes")
        wait_for(lambda: f"'{NS}', '{SERVER}'" in standby.log(), timeout=10,
                 what="the standby parking the server")
        events = audit_since(cp.audit_log, offset)
        assert time.monotonic() < frozen_until, "the window outlived the frozen replica's keep-alive"
        # ... and wrote nothing, while the audit log did record the test's own writes.
        assert any(e.get("verb") == "delete" and (e.get("objectRef") or {}).get("resource") == "services"
                   for e in events), "the audit log records requests"
        assert operator_writes(events, standby.identity) == []
        assert cp.kubectl("-n", NS, "get", child, check=False).returncode != 0, "nobody restored the child"

        # The frozen replica's keep-alive expires: the standby takes over and restores the child.
        wait_for(lambda: "Resuming operations" in standby.log(), timeout=LIFETIME + 60, what="the standby resuming")
        wait_for(lambda: cp.kubectl("-n", NS, "get", child, check=False).returncode == 0, timeout=60,
                 what=f"{child} restored by the former standby")
        restored = [w for w in operator_writes(audit_since(cp.audit_log, offset), standby.identity)
                    if "/services" in w]
        assert restored, "the child was restored by the former standby's own request"
        wait_for(lambda: ready(cp, "smtpserver", SERVER, NS), timeout=60, what="server Ready again")
    finally:
        if active.process is not None and active.process.poll() is None:
            active.process.kill()
            active.process.wait()
        standby.stop()
