"""End to end: the campaign sender's pod killed (SIGKILL, as a node failure or the OOM killer would) twice
mid-send, and a second sender Job started by hand in between. The Job starts a new pod each time; it takes
the campaign's Lease, reads the SQLite ledger the dead pod left on the Job's PersistentVolumeClaim and
carries on, while the hand-made Job's sender waits for the Lease: every recipient once at smtp-sink.

The process-level variant (three kills, two senders at once) is ``tests/campaign/test_send.py``.
"""

from __future__ import annotations

import collections
import copy
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from smtpinfra_operator.campaigns import job as build
from tests.e2e.common import NS, RCPT_DOMAIN, SENDER_DOMAIN, SINK_ADDR
from tests.e2e.test_campaign_send import LIST, TENANT, TENANT_NS, recipients_csv, start_server
from tests.kube import apply, find, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.operator]

SERVER, CAMPAIGN = "ckill", "ckill"
COUNT = 300
SECOND_JOB = "ckill-by-hand"
PER_MINUTE = 3000
"""50 a second: slow enough that the kills land mid-send, fast enough for a short test."""


def second_job(job: dict[str, Any]) -> dict[str, Any]:
    """The operator's sender Job copied by hand under another name (same image, claim, Secret, campaign)."""
    assert job, "the sender Job"
    template = copy.deepcopy(job["spec"]["template"])
    labels = template.get("metadata", {}).get("labels", {})
    for key in [k for k in labels if "controller-uid" in k or "job-name" in k]:
        del labels[key]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": SECOND_JOB, "namespace": TENANT_NS},
            "spec": {"backoffLimit": 0, "template": template}}


def test_sender_pod_killed_twice_and_a_second_job_still_send_each_recipient_once(
        platform: Any, knot: Any, sink_factory: Any, pod_runner: Any, tmp_path: Path) -> None:
    cp = platform
    sink = sink_factory(addr=SINK_ADDR)
    start_server(cp, knot, sink.port, tmp_path, SERVER)
    job_name = build.job_name(CAMPAIGN)
    try:
        apply(cp, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": LIST, "namespace": TENANT_NS},
                   "data": {"rows.csv": recipients_csv(COUNT)}})
        apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Campaign",
                   "metadata": {"name": CAMPAIGN, "namespace": TENANT_NS},
                   "spec": {"tenant": TENANT, "serverRef": {"name": SERVER, "namespace": NS},
                            "sender": {"address": f"news@{SENDER_DOMAIN}", "name": "ACME News"},
                            "subject": "News for {{ first_name }}",
                            "templates": {"text": "Hello {{ first_name }}, your code is {{ code }}."},
                            "recipients": {"configMapRef": {"name": LIST, "key": "rows.csv"}},
                            "rate": {"messagesPerMinute": PER_MINUTE},
                            "unsubscribe": {"url": "https://smtp.e2e.example.test/u",
                                            "mailto": f"unsubscribe@{SENDER_DOMAIN}"},
                            "postalAddress": "1 Main Street, Springfield"}})
        killed: list[str] = []
        for at in (COUNT // 4, COUNT * 2 // 3):
            pod, pid = wait_for(lambda: next(((p, i) for p, i in pod_runner.running_pids(TENANT_NS, job_name).items()
                                              if p not in killed), None),
                                timeout=120, interval=0.2, what="a running sender pod not killed yet")
            wait_for(lambda: len(sink.messages()) >= at, timeout=120, interval=0.2,  # noqa: B023
                     what=f"{at} messages at the sink")
            assert (find(cp, "campaign", CAMPAIGN, TENANT_NS) or {})["status"]["phase"] == "Sending"
            os.kill(pid, signal.SIGKILL)
            killed.append(pod)
            if len(killed) == 1:
                apply(cp, second_job(find(cp, "job", job_name, TENANT_NS) or {}))
                wait_for(lambda: pod_runner.running_pids(TENANT_NS, SECOND_JOB), timeout=60, interval=0.2,
                         what="the hand-made sender running")
        done: dict[str, Any] = wait_for(lambda: (o := find(cp, "campaign", CAMPAIGN, TENANT_NS)) and
                                        (o.get("status") or {}).get("phase") in ("Completed", "Failed") and o,
                                        timeout=400, interval=2, what="the Campaign finished")
        assert done["status"]["phase"] == "Completed", done["status"]

        per_recipient = collections.Counter(r for m in sink.messages() for r in m.rcpts)
        assert set(per_recipient) == {f"r{i:05d}@{RCPT_DOMAIN}" for i in range(COUNT)}
        assert [r for r, n in per_recipient.items() if n != 1] == []
        counters = done["status"]["counters"]
        assert (counters["total"], counters["delivered"], counters["failed"]) == (COUNT, COUNT, 0), counters

        # Two different pods of the Job were killed mid-send. Who finished is a race, and either way is
        # fine: the Job's third pod, or the hand-made sender once the killed holder's Lease expired.
        assert len(set(killed)) == 2 and all(p.startswith(job_name) for p in killed), killed
        ledger = pod_runner.claim_dir(TENANT_NS, build.resource_name(CAMPAIGN)) / "ledger.db"
        assert ledger.is_file() and ledger.stat().st_size > 0, "the ledger lives on the Job's claim"
    finally:
        cp.kubectl("-n", TENANT_NS, "delete", "job", SECOND_JOB, "--wait=false", check=False)
        cp.kubectl("-n", TENANT_NS, "delete", "campaign", CAMPAIGN, "--wait=false", check=False)
        cp.kubectl("-n", NS, "delete", "smtpserver", SERVER, "--wait=false", check=False)
