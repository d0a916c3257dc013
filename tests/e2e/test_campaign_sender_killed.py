"""End to end: the campaign sender killed (SIGKILL, as a node failure or the OOM killer would) three times at
random points mid-send, and a second sender Job started by hand after the first kill. Each kill hits the process
that holds the campaign's Lease (the one sending); the Job starts a new pod each time, and whichever sender takes
the Lease next reads the SQLite ledger on the Job's PersistentVolumeClaim and carries on: every recipient once at
smtp-sink. The points are drawn from SMTP_INFRA_E2E_KILL_SEED (default: the time), printed on failure.

The process-level variant (three kills, two senders at once) is ``tests/campaign/test_send.py``.
"""

from __future__ import annotations

import collections
import copy
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from smtpinfra_operator.campaigns import job as build
from tests.e2e.common import NS, RCPT_DOMAIN, SENDER_DOMAIN, SINK_ADDR
from tests.e2e.test_campaign_send import LIST, TENANT, TENANT_NS, recipients_csv, start_server
from tests.kube import apply, find, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.operator]

SERVER, CAMPAIGN = "ckill", "ckill"
COUNT = 400
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


def lease_holder(cp: Any, pod_runner: Any) -> tuple[str, int] | None:
    """(pod, pid) of the running sender that holds the campaign's Lease (its identity is `<hostname>-<pid>`, the
    pod runner gives each pod its own host name), or None while nobody running holds it."""
    lease = find(cp, "lease", build.lease_name(CAMPAIGN), TENANT_NS) or {}
    holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
    running = {**pod_runner.running_pids(TENANT_NS, build.job_name(CAMPAIGN)),
               **pod_runner.running_pids(TENANT_NS, SECOND_JOB)}
    return next(((pod, pid) for pod, pid in running.items() if holder.startswith(f"{pod}-")), None)


def test_sender_killed_three_times_and_a_second_job_still_send_each_recipient_once(
        platform: Any, knot: Any, sink_factory: Any, pod_runner: Any, tmp_path: Path) -> None:
    cp = platform
    sink = sink_factory(addr=SINK_ADDR)
    start_server(cp, knot, sink.port, tmp_path, SERVER)
    job_name = build.job_name(CAMPAIGN)
    seed = int(os.environ.get("SMTP_INFRA_E2E_KILL_SEED") or time.time())
    points = sorted(random.Random(seed).sample(range(COUNT // 10, COUNT * 4 // 5), 3))
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
        for at in points:
            wait_for(lambda: len(sink.messages()) >= at, timeout=180, interval=0.1,  # noqa: B023
                     what=f"{at} messages at the sink (seed {seed}, points {points})")
            pod, pid = wait_for(lambda: lease_holder(cp, pod_runner), timeout=120, interval=0.1,
                                what=f"a running sender holding the Lease (seed {seed})")
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
        assert [r for r, n in per_recipient.items() if n != 1] == [], f"seed {seed}, points {points}"
        counters = done["status"]["counters"]
        assert (counters["total"], counters["delivered"], counters["failed"]) == (COUNT, COUNT, 0), counters

        # Three different senders were killed while holding the Lease. Who finished is a race, and either way
        # is fine: a later pod of the Job, or the hand-made sender once the killed holder's Lease expired.
        assert len(set(killed)) == 3, (killed, seed)
        ledger = pod_runner.claim_dir(TENANT_NS, build.resource_name(CAMPAIGN)) / "ledger.db"
        assert ledger.is_file() and ledger.stat().st_size > 0, "the ledger lives on the Job's claim"
    finally:
        cp.kubectl("-n", TENANT_NS, "delete", "job", SECOND_JOB, "--wait=false", check=False)
        cp.kubectl("-n", TENANT_NS, "delete", "campaign", CAMPAIGN, "--wait=false", check=False)
        cp.kubectl("-n", NS, "delete", "smtpserver", SERVER, "--wait=false", check=False)
