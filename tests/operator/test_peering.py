"""Two operator replicas in one Kopf peering: only the higher priority works; the other takes over when it dies.

The peering CRD comes from the chart (rendered with helm, as `peering.name` installs it). Both
replicas run against the real control plane with the same peering name and different
`--priority`; the lower one must pause (Kopf's watch streams and our resync loop), so only the
higher one's log shows the Tenant it reconciled. After the active replica is SIGKILLed (no
goodbye in the peering object), the other resumes once the dead one's keep-alive expires and
reconciles a Tenant created after the kill.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from smtpinfra_operator.peering import Peering, blocking_peers, default_priority
from tests.kube import KUBE_VERSION, ROOT, OperatorProcess, apply, condition, find, operator_kubeconfig, wait_for

pytestmark = pytest.mark.operator

PEERING = "peering-test"
LIFETIME = 10  # seconds a keep-alive counts; short so the takeover after SIGKILL is quick


class PeeredOperator(OperatorProcess):
    """`smtp-infra operator run --peering … --priority …` with the given (the chart's) credentials."""

    def __init__(self, cp: Any, log_path: Path, priority: int, kubeconfig: Path) -> None:
        super().__init__(cp, log_path, env={"SMTP_INFRA_PEERING_LIFETIME": str(LIFETIME)}, kubeconfig=kubeconfig)
        self.priority = priority

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "smtpinfra_cli", "operator", "run", "--kubeconfig", str(self.kubeconfig),
             "--peering", PEERING, "--priority", str(self.priority)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
        )


def tenant(name: str) -> dict[str, Any]:
    return {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
            "spec": {"displayName": name, "senderDomains": [f"{name}.example.test"]}}


def is_ready(cp: Any, name: str) -> bool:
    obj = find(cp, "tenant", name)
    ready = condition(obj, "Ready") if obj else None
    return bool(ready and ready["status"] == "True")


@pytest.fixture(scope="module")
def peering_crd(crds: Any) -> Any:
    """The chart's ClusterKopfPeering CRD, installed as `helm install --set peering.name=…` would."""
    cp = crds
    home = Path(tempfile.gettempdir()) / "smtp-infra-helm"
    env = {**cp.env(), "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}
    rendered = subprocess.run(
        [str(cp.bin_dir / "helm"), "template", "x", str(ROOT / "charts" / "smtp-infra"), "--kube-version", KUBE_VERSION,
         "--set", "replicaCount=2", "--set", f"peering.name={PEERING}", "--show-only", "templates/peering-crd.yaml"],
        capture_output=True, text=True, env=env, check=True).stdout
    apply(cp, rendered)
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/clusterkopfpeerings.kopf.dev")
    return cp


def forbidden(log: str) -> list[str]:
    """Log lines where the API server refused the operator something (a verb the chart's role lacks)."""
    return [line for line in log.splitlines() if "Forbidden" in line or "forbidden" in line]


def test_only_the_higher_priority_replica_works_and_the_other_takes_over(peering_crd, tmp_path):
    """Both replicas run as the chart's ServiceAccount with the role `peering.name` renders (not cluster-admin)."""
    cp = peering_crd
    kubeconfig = operator_kubeconfig(cp, tmp_path / "kubeconfig", "replicaCount=2", f"peering.name={PEERING}")
    high = PeeredOperator(cp, tmp_path / "high.log", priority=200, kubeconfig=kubeconfig)
    low = PeeredOperator(cp, tmp_path / "low.log", priority=100, kubeconfig=kubeconfig)
    high.start()
    wait_for(lambda: "Activity 'start_runtime' succeeded" in high.log(), timeout=60, what="high replica started")
    low.start()
    try:
        # The operator creates the peering object; both replicas show up in it with their priorities.
        wait_for(lambda: len((find(cp, "clusterkopfpeering", PEERING) or {}).get("status") or {}) >= 2,
                 timeout=60, what="both replicas in the peering object")
        priorities = sorted(p["priority"] for p in find(cp, "clusterkopfpeering", PEERING)["status"].values())
        assert priorities == [100, 200]
        # Kopf starts its watch streams paused until the peering is evaluated (it logs only changes);
        # our resync loop, which runs beside Kopf, says so itself.
        wait_for(lambda: "resync paused: another replica is active" in low.log(), timeout=30,
                 what="the low-priority replica pausing its resync loop")
        assert "resync paused" not in high.log()

        apply(cp, tenant("peer-first"))
        wait_for(lambda: is_ready(cp, "peer-first"), timeout=60, what="peer-first Ready")
        # The log line follows the status write it reports.
        wait_for(lambda: "Tenant /peer-first: Ready=True" in high.log(), timeout=10, what="high logged it")
        # Several resync periods (2 s in tests) later, the paused replica still has not touched it.
        time.sleep(6)
        assert "Handler 'on_tenant' succeeded" in high.log()
        assert "Handler 'on_tenant'" not in low.log(), low.log()[-3000:]
        assert "peer-first" not in low.log(), low.log()[-3000:]

        # The active replica dies without a goodbye; the other resumes after the keep-alive expires.
        assert high.process is not None
        high.process.kill()
        high.process.wait()
        apply(cp, tenant("peer-second"))
        wait_for(lambda: "Resuming operations" in low.log(), timeout=LIFETIME + 60,
                 what="the remaining replica resuming")
        wait_for(lambda: is_ready(cp, "peer-second"), timeout=60, what="peer-second Ready by the survivor")
        wait_for(lambda: "Tenant /peer-second: Ready=True" in low.log(), timeout=10, what="low logged it")
        assert "peer-second" not in high.log()
        assert forbidden(high.log()) == [] and forbidden(low.log()) == []
    finally:
        for proc in (high, low):
            proc.stop()
        cp.kubectl("delete", "tenant", "peer-first", "peer-second", "--ignore-not-found", "--wait=false", check=False)
        cp.kubectl("delete", "clusterkopfpeering", PEERING, "--ignore-not-found", check=False)


def test_pause_rule_matches_kopf():
    """A live peer with a higher or the same priority pauses us; dead ones and lower ones do not."""
    me = Peering(name=PEERING, identity="me", priority=100)
    now = datetime.now(UTC)
    fresh = (now - timedelta(seconds=5)).isoformat()
    stale = (now - timedelta(seconds=120)).isoformat()
    status = {
        "me": {"priority": 100, "lastseen": fresh, "lifetime": 60},
        "lower": {"priority": 50, "lastseen": fresh, "lifetime": 60},
        "dead-higher": {"priority": 500, "lastseen": stale, "lifetime": 60},
    }
    assert blocking_peers(status, me, now) == []
    assert blocking_peers({**status, "tie": {"priority": 100, "lastseen": fresh, "lifetime": 60}}, me, now) == ["tie"]
    assert blocking_peers({**status, "up": {"priority": 101, "lastseen": fresh, "lifetime": 60}}, me, now) == ["up"]


def test_default_priorities_of_two_replicas_differ():
    """Replicas of one Deployment share every flag; their pod names must give distinct priorities."""
    assert default_priority("smtp-infra-operator-7d9f-abcde") != default_priority("smtp-infra-operator-7d9f-fghij")
