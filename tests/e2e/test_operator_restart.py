"""An operator restart changes nothing on healthy objects, and finds the work that arrived while it was down.

A Ready SmtpServer (two pods, simulated by kwok: its image is not one the local pod runner
runs), its IpPool and a Tenant it serves; the operator is stopped (SIGTERM, or SIGKILL without
any goodbye), one of the server's children is deleted while it is down, and it is started
again, standalone or in a peering. Every condition of the three objects keeps its status, reason
and lastTransitionTime through all of it, and the deleted child is back within seconds of the
start, with the periodic resync far away (it must come from the start, not a resync).

In the peering case the restarted replica keeps its identity (POD_ID, as a restarted container of
the same pod does), so its own keep-alive from before the kill does not make it wait for itself.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.kube import KUBE_VERSION, ROOT, OperatorProcess, apply, find, helm, wait_for

pytestmark = pytest.mark.operator

NS = "restart-test"
SERVER = "steady"
POOL = "restart-pool"
TENANT = "restart-tenant"
PEERING = "restart-peering"
IMAGE = "registry.example.test/mta:1"
"""Not an image of ours: kwok runs the pods (Running and Ready at once), no MTA process needed."""
RESTORED_WITHIN = 5.0
"""Seconds from the operator's start (its first log line: Python has imported it, Kopf starts) to a
deleted child being back (the issue's bound)."""
QUIET_AFTER = 10.0
"""Seconds the conditions are watched after the child is back, for a late flip."""


def server_manifest() -> dict[str, Any]:
    return {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "SmtpServer",
            "metadata": {"name": SERVER, "namespace": NS},
            "spec": {"hostname": "steady.restart.example.test", "returnPathDomain": "bounces.restart.example.test",
                     "replicas": 2, "ipPools": [POOL], "image": IMAGE,
                     "tls": {"secretName": "steady-tls"}, "dns": {"provider": "none"},
                     "tenantSelector": {"matchLabels": {"restart": "yes"}}}}


class RestartableOperator(OperatorProcess):
    """`smtp-infra operator run`, standalone or peered, with a fixed identity and a distant resync."""

    def __init__(self, cp: Any, log_path: Path, peering: bool) -> None:
        super().__init__(cp, log_path, env={"SMTP_INFRA_RESYNC_SECONDS": "600", "SMTP_INFRA_FULL_RESYNC_SECONDS": "600",
                                            "SMTP_INFRA_PEERING_LIFETIME": "20", "POD_ID": "restart-replica-0"})
        self.peering = peering
        self.started_at = 0.0

    def start(self) -> None:
        args = ["--peering", PEERING, "--priority", "100"] if self.peering else []
        log = self.log_path.open("ab")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "smtpinfra_cli", "operator", "run", "--kubeconfig", str(self.cp.kubeconfig),
             *args], stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)

    def started_at_wall(self, offset: int) -> datetime:
        """When the operator logged its first start-up activity after log position `offset`."""
        text = self.log_path.read_bytes()[offset:].decode(errors="replace")
        match = re.search(r"^\[([0-9-]+ [0-9:,]+)\] kopf\.activities\.star", text, re.MULTILINE)
        assert match, "the operator logged its start"
        return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")

    def signal_and_wait(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)
        self.process.wait(timeout=30)


def conditions_of(cp: Any, resource: str, name: str, namespace: str | None = None) -> dict[str, tuple[str, ...]]:
    """type → (status, reason, lastTransitionTime) of every condition."""
    obj = find(cp, resource, name, namespace) or {}
    return {c["type"]: (c["status"], c.get("reason", ""), c.get("lastTransitionTime", ""))
            for c in (obj.get("status") or {}).get("conditions") or []}


def snapshot(cp: Any) -> dict[str, dict[str, tuple[str, ...]]]:
    return {"smtpserver": conditions_of(cp, "smtpserver", SERVER, NS), "ippool": conditions_of(cp, "ippool", POOL),
            "tenant": conditions_of(cp, "tenant", TENANT)}


def spool_volumes(cp: Any, count: int) -> None:
    """Volumes pre-bound to the server's spool claims: nothing provisions volumes here, and the
    scheduler keeps a pod with an unbound claim Pending."""
    for ordinal in range(count):
        claim = f"spool-{SERVER}-{ordinal}"
        apply(cp, {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{NS}-{claim}"},
                   "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                            "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/tmp/{NS}-{claim}"},
                            "claimRef": {"namespace": NS, "name": claim}}})


def ready(conds: dict[str, tuple[str, ...]]) -> bool:
    return conds.get("Ready", ("",))[0] == "True"


@pytest.fixture(scope="module")
def world(crds: Any, tls_files: Any) -> Any:
    """The peering CRD (as the chart installs it) and a healthy server, pool and tenant."""
    cp = crds
    rendered = helm(cp, "template", "x", str(ROOT / "charts" / "smtp-infra"), "--kube-version", KUBE_VERSION,
                    "--set", f"peering.name={PEERING}", "--show-only", "templates/peering-crd.yaml").stdout
    apply(cp, rendered)
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/clusterkopfpeerings.kopf.dev")
    cp.kubectl("create", "namespace", NS, check=False)
    spool_volumes(cp, 2)
    cert, key = tls_files
    cp.kubectl("-n", NS, "create", "secret", "tls", "steady-tls", f"--cert={cert}", f"--key={key}", check=False)
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": POOL},
               "spec": {"addresses": ["127.0.30.1", "127.0.30.2"], "ptrTemplate": "mta-{index}.restart.example.test"}})
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Tenant",
               "metadata": {"name": TENANT, "labels": {"restart": "yes"}},
               "spec": {"displayName": "Restart", "senderDomains": ["restart.example.test"]}})
    apply(cp, server_manifest())
    yield cp
    cp.kubectl("-n", NS, "delete", "smtpserver", SERVER, "--wait=false", check=False)
    cp.kubectl("delete", "tenant", TENANT, "--wait=false", check=False)
    cp.kubectl("delete", "ippool", POOL, "--wait=false", check=False)


@pytest.mark.parametrize("peering", [False, True], ids=["standalone", "peering"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_restart_changes_no_condition_and_restores_a_child_deleted_meanwhile(world, tmp_path, peering, signum):
    cp = world
    operator = RestartableOperator(cp, tmp_path / "operator.log", peering)
    operator.start()
    try:
        last: list[dict[str, dict[str, tuple[str, ...]]]] = [{}]

        def all_ready() -> bool:
            last[0] = snapshot(cp)
            return all(ready(c) for c in last[0].values())

        try:
            wait_for(all_ready, timeout=120, what="server, pool and tenant Ready")
        except AssertionError as error:
            pods = cp.kubectl("-n", NS, "get", "pods,pvc", "-o", "wide", check=False).stdout
            raise AssertionError(f"{error}\nlast conditions: {last[0]}\n{pods}\n"
                                 f"operator log (tail):\n{operator.log()[-6000:]}") from None
        wait_for(lambda: "Handler 'on_server' succeeded" in operator.log(), timeout=60,
                 what="the operator through its start")
        before = snapshot(cp)
        sts_before = cp.get_json("statefulset", SERVER, namespace=NS)
        operator.signal_and_wait(signum)

        child = f"service/{SERVER}-inbound"
        cp.kubectl("-n", NS, "get", child)
        cp.kubectl("-n", NS, "delete", child, "--wait=true")
        assert snapshot(cp) == before

        offset = operator.log_path.stat().st_size
        operator.start()
        seen: list[dict[str, Any]] = []

        def child_back() -> bool:
            seen.append(snapshot(cp))
            return cp.kubectl("-n", NS, "get", child, check=False).returncode == 0

        wait_for(child_back, timeout=60, interval=0.1, what=f"{child} restored after the restart")
        restored_at = datetime.now()
        restored_after = (restored_at - operator.started_at_wall(offset)).total_seconds()
        since_spawn = time.monotonic() - operator.started_at
        deadline = time.monotonic() + QUIET_AFTER
        while time.monotonic() < deadline:
            seen.append(snapshot(cp))
            time.sleep(0.2)
        changed = [s for s in seen if s != before]
        assert not changed, f"conditions changed through the restart: before {before}, then {changed[:3]}"
        # The pods were not rolled: the restarted operator applied the same template.
        sts_after = cp.get_json("statefulset", SERVER, namespace=NS)
        assert sts_after["metadata"]["generation"] == sts_before["metadata"]["generation"]
        print(f"{child} back {restored_after:.1f}s after the operator's start ({since_spawn:.1f}s after the spawn)")
        assert restored_after <= RESTORED_WITHIN, f"{child} back {restored_after:.1f}s after the start"
    finally:
        operator.stop()
        if peering:
            cp.kubectl("delete", "clusterkopfpeering", PEERING, "--ignore-not-found", check=False)
