"""End to end with a real MTA pod: a Campaign's counters come from the MTA's per-campaign outcomes, and it is
Completed only once every recipient was delivered (not when the sender said it was done).

The sender is built apart: the test submits the campaign's messages as the sender would (SMTP AUTH with the
tenant's credentials, the campaign's Feedback-ID) and writes the sender's Lease progress; the sender Job's image
is one kwok simulates.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from smtpinfra_mta.campaign_contract import feedback_id
from smtpinfra_operator.campaigns import job as build
from smtpinfra_operator.campaigns.erasure import STATUS_ANNOTATION
from smtpinfra_operator.campaigns.progress import PROGRESS_ANNOTATION
from tests.e2e.common import NS, RCPT_DOMAIN, SENDER_DOMAIN, SINK_ADDR
from tests.e2e.test_smtpserver import pods, server_manifest, tenant_password
from tests.kube import OperatorProcess, apply, condition, find, operator_kubeconfig, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.operator]

TENANT, TENANT_NS = "e2e-acme", "tenant-e2e-acme"


@pytest.fixture(scope="module")
def operator(crds: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator with the chart's RBAC; its sender Jobs use an image kwok simulates."""
    directory = tmp_path_factory.mktemp("operator")
    proc = OperatorProcess(crds, directory / "operator.log",
                           env={"SMTP_INFRA_CAMPAIGN_IMAGE": "registry.example/campaign-sender:e2e"},
                           kubeconfig=operator_kubeconfig(crds, directory / "kubeconfig"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def submit(ip: str, password: str, to: str, campaign: str) -> subprocess.CompletedProcess[str]:
    sender = f"news@{SENDER_DOMAIN}"
    return subprocess.run(
        ["swaks", "--server", f"{ip}:587", "--tls", "--auth", "PLAIN", "--auth-user", TENANT, "--auth-password",
         password, "--from", sender, "--to", to, "--h-From", sender, "--h-Subject", "news",
         "--add-header", f"Feedback-ID: {feedback_id(campaign, TENANT, TENANT_NS)}", "--timeout", "20"],
        capture_output=True, text=True, timeout=60)


def test_counters_follow_the_mta_and_completion_waits_for_delivery(platform, knot, sink_factory):
    cp = platform
    sink = sink_factory(addr=SINK_ADDR)
    apply(cp, server_manifest("cmpmta", knot, sink.port, replicas=1))
    result = cp.kubectl("-n", NS, "wait", "--for=condition=Ready", "smtpserver/cmpmta", "--timeout=120s", check=False)
    assert result.returncode == 0, result.stderr
    recipients = [f"ann@{RCPT_DOMAIN}", f"bob@{RCPT_DOMAIN}"]
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Campaign",
               "metadata": {"name": "outcomes", "namespace": TENANT_NS},
               "spec": {"tenant": TENANT, "serverRef": {"name": "cmpmta", "namespace": NS},
                        "sender": {"address": f"news@{SENDER_DOMAIN}"}, "subject": "news",
                        "templates": {"text": "Hello"}, "recipients": {"inline": recipients},
                        "unsubscribe": {"url": "https://smtp.e2e.example.test/u",
                                        "mailto": "unsubscribe@e2e.example.test"},
                        "postalAddress": "1 Main Street, Springfield"}})
    try:
        wait_for(lambda: find(cp, "job", build.job_name("outcomes"), TENANT_NS), timeout=60, what="sender Job")
        # The sender says it is done before anything was delivered: that is not Completed.
        apply(cp, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": build.lease_name("outcomes"), "namespace": TENANT_NS, "annotations": {
                       PROGRESS_ANNOTATION: json.dumps({"total": 2, "submitted": 2, "invalid": 0, "suppressed": 0,
                                                        "failed": 0, "done": True, "error": None,
                                                        "invalidRows": []})}},
                   "spec": {"holderIdentity": "sender-e2e"}})
        waiting = wait_for(lambda: (o := find(cp, "campaign", "outcomes", TENANT_NS)) and
                           (o.get("status") or {}).get("phase") == "Sending" and
                           condition(o, "Ready")["reason"] == "WaitingForOutcomes" and o, timeout=60,
                           what="waiting for the MTA's outcomes")
        assert waiting["status"]["counters"]["delivered"] == 0

        ip, password = pods(cp, "cmpmta")["cmpmta-0"], tenant_password(cp)
        for rcpt in recipients:
            sent = submit(ip, password, rcpt, "outcomes")
            assert "250 2.0.0" in sent.stdout, sent.stdout + sent.stderr
        sink.wait_messages(2, timeout=60)
        done = wait_for(lambda: (o := find(cp, "campaign", "outcomes", TENANT_NS)) and
                        (o.get("status") or {}).get("phase") == "Completed" and o, timeout=90,
                        what="Completed from the MTA's outcomes")
        counters = done["status"]["counters"]
        assert (counters["delivered"], counters["sent"], counters["deferred"], counters["total"]) == (2, 2, 0, 2)
        assert done["status"]["progress"] == "100%" and condition(done, "Ready")["status"] == "True"

        # GDPR erasure through the pod's own endpoint (its /stats token), confirmed by the one running pod; the
        # campaign's SQLite ledger is left to the operator's erasure Job, whose image kwok simulates here (it
        # never finishes): the request stays pending, naming that ledger.
        erased = subprocess.run([sys.executable, "-m", "smtpinfra_cli", "tenant", "erase", TENANT, recipients[0],
                                 "--kubeconfig", str(cp.kubeconfig), "--wait", "0"], capture_output=True, text=True,
                                timeout=120, check=False)
        assert erased.returncode == 0, erased.stdout + erased.stderr
        assert f"erased on {NS}/cmpmta-0" in erased.stdout
        request = re.search(rf"erasure requested as secret {TENANT_NS}/(\S+)", erased.stdout)
        assert request, erased.stdout
        pending = wait_for(lambda: (s := find(cp, "secret", request.group(1), TENANT_NS)) and
                           (s["metadata"].get("annotations") or {}).get(STATUS_ANNOTATION, ""), timeout=60,
                           what="the operator's note on the erasure request")
        assert pending.startswith("pending ") and "campaign ledger of campaign outcomes" in pending, pending
    finally:
        cp.kubectl("-n", TENANT_NS, "delete", "campaign", "outcomes", "--wait=false", check=False)
        cp.kubectl("-n", NS, "delete", "smtpserver", "cmpmta", "--wait=false", check=False)
