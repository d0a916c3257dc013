"""The operator against the real control plane: WarmupPlan status, and Pending for the other kinds."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
import yaml

from tests.kube import EXAMPLES, apply, condition, get, wait_for

pytestmark = pytest.mark.operator


def plan(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "WarmupPlan", "metadata": {"name": name}, "spec": spec}


def ready(obj: dict[str, Any]) -> dict[str, Any] | None:
    return condition(obj, "Ready")


def test_valid_plan_becomes_ready_with_a_summary(operator):
    cp = operator.cp
    apply(cp, (EXAMPLES / "warmupplan-standard.yaml").read_text())
    result = cp.kubectl("wait", "--for=condition=Ready", "warmupplan/standard", "--timeout=60s", check=False)
    assert result.returncode == 0, result.stderr + operator.log()[-3000:]
    obj = get(cp, "warmupplan", "standard")
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["daysToFullVolume"] == 35
    assert status["finalDailyCap"] == 100000
    assert ready(obj)["reason"] == "PlanValid"
    assert condition(obj, "Reconciling")["status"] == "False"
    assert condition(obj, "Stalled")["status"] == "False"
    columns = cp.kubectl("get", "warmupplan", "standard").stdout
    assert "100000" in columns and "35" in columns and "True" in columns
    # No Kopf annotations on the user's object: bookkeeping lives in status.
    assert not [a for a in obj["metadata"].get("annotations", {}) if "kopf" in a]


def test_invalid_plan_is_not_ready_with_the_reason(operator):
    cp = operator.cp
    apply(cp, plan("shrinking", {"stages": [{"day": 1, "dailyCap": 500}, {"day": 3, "dailyCap": 200}]}))
    obj = wait_for(lambda: (o := get(cp, "warmupplan", "shrinking")) and ready(o) and
                   ready(o)["status"] == "False" and o, what="Ready=False", timeout=60)
    assert ready(obj)["reason"] == "CapsNotIncreasing"
    assert "spec.stages[1].dailyCap (200)" in ready(obj)["message"]
    assert condition(obj, "Stalled")["status"] == "True"
    wait_for(lambda: "CapsNotIncreasing" in cp.kubectl(
        "get", "events", "-n", "default", "--field-selector", "involvedObject.name=shrinking", "-o", "yaml").stdout,
        what="a Warning event naming the reason", timeout=30)


def test_editing_a_plan_updates_status_and_generation(operator):
    cp = operator.cp
    apply(cp, plan("edited", {"geometric": {"initialDailyCap": 100, "growthFactor": "1.05",
                                             "targetDailyCap": 100000, "maxDays": 30}}))
    first = wait_for(lambda: (o := get(cp, "warmupplan", "edited")) and ready(o) and
                     ready(o)["status"] == "False" and o, what="CeilingNotReached", timeout=60)
    assert ready(first)["reason"] == "CeilingNotReached"
    failed_at = ready(first)["lastTransitionTime"]
    fixed = plan("edited", {"geometric": {"initialDailyCap": 100, "growthFactor": "1.5",
                                          "targetDailyCap": 100000, "maxDays": 30}})
    apply(cp, fixed)
    obj = wait_for(lambda: (o := get(cp, "warmupplan", "edited")) and ready(o)["status"] == "True" and o,
                   what="Ready after edit", timeout=60)
    assert obj["metadata"]["generation"] == first["metadata"]["generation"] + 1
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert ready(obj)["observedGeneration"] == obj["metadata"]["generation"]
    assert obj["status"]["daysToFullVolume"] == 19
    assert ready(obj)["lastTransitionTime"] >= failed_at


def test_no_hot_loop_after_ready(operator):
    """Once reconciled, neither status writes nor timers change the object again."""
    cp = operator.cp
    apply(cp, (EXAMPLES / "warmupplan-geometric.yaml").read_text())
    cp.kubectl("wait", "--for=condition=Ready", "warmupplan/geometric", "--timeout=60s")
    time.sleep(3)  # let the post-write watch events and Kopf's own bookkeeping settle
    before = get(cp, "warmupplan", "geometric")
    time.sleep(6)  # three resync periods (SMTP_INFRA_RESYNC_SECONDS=2 in tests)
    after = get(cp, "warmupplan", "geometric")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert ready(after)["lastTransitionTime"] == ready(before)["lastTransitionTime"]


def test_status_written_by_hand_is_corrected_by_the_timer(operator):
    """Level-based: a status overwritten by someone else is re-derived."""
    cp = operator.cp
    apply(cp, (EXAMPLES / "warmupplan-standard.yaml").read_text())
    cp.kubectl("wait", "--for=condition=Ready", "warmupplan/standard", "--timeout=60s")
    derived = get(cp, "warmupplan", "standard")["status"]["finalDailyCap"]
    assert derived == 100000
    patched = json.loads(cp.kubectl("patch", "warmupplan", "standard", "--subresource=status", "--type=merge",
                                    "-p", '{"status": {"finalDailyCap": 1}}', "-o", "json").stdout)
    assert patched["status"]["finalDailyCap"] == 1  # the hand-written value really was stored
    wait_for(lambda: get(cp, "warmupplan", "standard")["status"]["finalDailyCap"] == derived,
             what="timer restores finalDailyCap", timeout=30)


def apply_examples(cp: Any) -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                apply(cp, copy.deepcopy(doc))


def test_campaign_is_reconciled_with_observed_generation(operator):
    """The example Campaign gets its sender Job and an honest status: Sending, not Ready until every
    recipient has a final outcome (the sender's pod does not run here)."""
    cp = operator.cp
    apply_examples(cp)
    obj = wait_for(lambda: (o := get(cp, "campaign", "november-newsletter", "tenant-acme")) and ready(o) and
                   (o.get("status") or {}).get("phase") == "Sending" and o, what="Campaign status", timeout=60)
    assert ready(obj)["status"] == "False"
    assert ready(obj)["reason"] == "Sending"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert condition(obj, "Reconciling")["status"] == "True"
    assert condition(obj, "TemplatesValid")["status"] == "True"
    assert get(cp, "job", obj["status"]["jobName"], "tenant-acme")["metadata"]["ownerReferences"][0]["uid"] == \
        obj["metadata"]["uid"]


def test_missing_tls_secret_is_named_and_recovers(operator, tls_files):
    cp = operator.cp
    apply_examples(cp)
    cp.kubectl("delete", "secret", "smtp-mail-example-com-tls", "--ignore-not-found")
    obj = wait_for(lambda: (o := get(cp, "smtpserver", "outbound", "default")) and ready(o) and
                   ready(o)["reason"] == "TlsSecretNotFound" and o, what="TlsSecretNotFound", timeout=60)
    assert "Secret default/smtp-mail-example-com-tls (spec.tls.secretName) not found" in ready(obj)["message"]
    assert ready(obj)["status"] == "False"
    assert condition(obj, "Stalled")["status"] == "True"
    cert, key = tls_files
    cp.kubectl("create", "secret", "tls", "smtp-mail-example-com-tls", f"--cert={cert}", f"--key={key}")
    # The reference resolves by itself (resync); without the pod runner kwok leaves the pods
    # Pending, so the server moves on to waiting for its pods.
    seen: list[str] = []

    def recovered() -> bool:
        seen.append(ready(get(cp, "smtpserver", "outbound", "default"))["reason"])
        return seen[-1] in ("PodsNotReady", "Available")

    try:
        wait_for(recovered, what="recovered from the missing Secret", timeout=90)
    except AssertionError as error:
        raise AssertionError(f"{error}; reasons seen: {sorted(set(seen))}") from None
    assert get(cp, "statefulset", "outbound", "default")["spec"]["replicas"] == 2
