"""End to end on the local control plane: a Campaign becomes its sender Job, RBAC, Secret and ledger claim;
a template error sends nothing; suspend pauses the Job and deleting the Campaign removes it; the status
follows the sender's progress on its Lease.

The sender itself is built apart: its image here is one kwok simulates (the pod "runs" and does nothing),
so the test writes the Lease progress annotation the sender would write. Per-campaign MTA outcomes join
the counters through the same decision (tests/operator/test_campaign_decisions.py).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from smtpinfra_campaign.keys import sender_key
from smtpinfra_operator.campaigns import job as build
from smtpinfra_operator.campaigns.erasure import REQUEST_LABEL, STATUS_ANNOTATION
from smtpinfra_operator.campaigns.progress import PROGRESS_ANNOTATION
from tests.kube import OperatorProcess, apply, condition, find, get, operator_kubeconfig, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.operator]

TENANT = "cmp-acme"
TENANT_NS = f"tenant-{TENANT}"
SERVER_NS = "cmp-mail"
SENDER_IMAGE = "registry.example/campaign-sender:e2e"
"""Not one of our images: kwok plays its pod (Running), the local pod runner leaves it alone."""


@pytest.fixture(scope="module")
def operator(crds: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator with the chart's RBAC, its sender Jobs using a simulated image."""
    directory = tmp_path_factory.mktemp("operator")
    proc = OperatorProcess(crds, directory / "operator.log", env={"SMTP_INFRA_CAMPAIGN_IMAGE": SENDER_IMAGE},
                           kubeconfig=operator_kubeconfig(crds, directory / "kubeconfig"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def cluster(operator: OperatorProcess, tls_files: tuple[Any, Any]) -> Iterator[Any]:
    """A tenant, a server for it (its pods need not run) and a recipient list in the tenant's namespace."""
    cp = operator.cp
    cp.kubectl("create", "namespace", SERVER_NS, check=False)
    cert, key = tls_files
    cp.kubectl("-n", SERVER_NS, "create", "secret", "tls", "cmp-tls", f"--cert={cert}", f"--key={key}", check=False)
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": "cmp-pool"},
               "spec": {"addresses": ["127.0.31.1"], "ptrTemplate": "mta-{index}.cmp.example.test"}})
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Tenant",
               "metadata": {"name": TENANT, "labels": {"tier": "cmp"}},
               "spec": {"displayName": "Campaign e2e", "senderDomains": ["cmp-acme.example.test"]}})
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "SmtpServer",
               "metadata": {"name": "cmp-out", "namespace": SERVER_NS},
               "spec": {"hostname": "mta.cmp.example.test", "replicas": 1, "ipPools": ["cmp-pool"],
                        "returnPathDomain": "bounces.cmp.example.test", "tls": {"secretName": "cmp-tls"},
                        "tenantSelector": {"matchLabels": {"tier": "cmp"}}}})
    cp.kubectl("wait", "--for=condition=Ready", f"tenant/{TENANT}", "--timeout=90s")
    apply(cp, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "list", "namespace": TENANT_NS},
               "data": {"rows.csv": "email,first_name\nann@rcpt.example.test,Ann\nbob@rcpt.example.test,Bob\n"
                                    "cy@rcpt.example.test,Cy\n"}})
    yield cp
    cp.kubectl("-n", TENANT_NS, "delete", "campaign", "--all", "--wait=false", check=False)
    cp.kubectl("-n", SERVER_NS, "delete", "smtpserver", "--all", "--wait=false", check=False)


def campaign(name: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tenant": TENANT, "serverRef": {"name": "cmp-out", "namespace": SERVER_NS},
        "sender": {"address": "news@cmp-acme.example.test"}, "subject": "News for {{ first_name }}",
        "templates": {"text": "Hello {{ first_name }}"},
        "recipients": {"configMapRef": {"name": "list", "key": "rows.csv"}},
        "unsubscribe": {"url": "https://mta.cmp.example.test/u",
                        "mailto": "unsubscribe@cmp.example.test"},
        "postalAddress": "1 Main Street, Springfield",
    }
    spec.update(overrides)
    return {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Campaign",
            "metadata": {"name": name, "namespace": TENANT_NS}, "spec": spec}


def status_of(cp: Any, name: str) -> dict[str, Any]:
    return (find(cp, "campaign", name, TENANT_NS) or {}).get("status") or {}


def phase_is(cp: Any, name: str, phase: str, reason: str | None = None) -> dict[str, Any] | None:
    obj = find(cp, "campaign", name, TENANT_NS) or {}
    status = obj.get("status") or {}
    ready = condition(obj, "Ready") if status else None
    if status.get("phase") != phase or (reason is not None and (ready or {}).get("reason") != reason):
        return None
    return obj


def write_progress(cp: Any, name: str, progress: dict[str, Any]) -> None:
    """What the sender does: its progress as the one annotation on its Lease."""
    apply(cp, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": build.lease_name(name), "namespace": TENANT_NS,
                            "annotations": {PROGRESS_ANNOTATION: json.dumps(progress)}},
               "spec": {"holderIdentity": "sender-e2e"}})


def test_campaign_gets_its_sender_and_follows_the_lease(cluster: Any) -> None:
    cp = cluster
    apply(cp, campaign("welcome"))
    job = wait_for(lambda: find(cp, "job", build.job_name("welcome"), TENANT_NS), timeout=90,
                   what="the sender Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == SENDER_IMAGE
    assert container["command"][:3] == ["smtp-infra", "campaign", "send"]
    assert container["command"][3:] == ["--namespace", TENANT_NS, "--name", "welcome", "--ledger", build.LEDGER_URL,
                                        "--lease", "campaign-welcome"]
    owner = get(cp, "campaign", "welcome", TENANT_NS)["metadata"]["uid"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == owner
    sender = build.resource_name("welcome")
    for kind in ("serviceaccount", "role", "rolebinding", "secret", "persistentvolumeclaim"):
        obj = get(cp, kind, sender, TENANT_NS)
        assert obj["metadata"]["ownerReferences"][0]["uid"] == owner, kind
    # The sender's ServiceAccount may read its Campaign and list, and write its Lease; not other Secrets.
    def can(verb: str, resource: str) -> bool:
        result = cp.kubectl("auth", "can-i", verb, resource, "-n", TENANT_NS,
                            f"--as=system:serviceaccount:{TENANT_NS}:{sender}", check=False)
        return result.stdout.strip() == "yes"

    assert can("get", "campaigns.smtpinfra.com/welcome") and can("get", "configmaps/list")
    assert can("update", "leases.coordination.k8s.io/campaign-welcome")
    assert can("get", f"tenants.smtpinfra.com/{TENANT}")
    assert not can("get", "secrets/smtp-credentials") and not can("delete", "jobs")
    # Not the key the MTA pods hold: the one derived from it for this tenant and namespace.
    copied = base64.b64decode(get(cp, "secret", sender, TENANT_NS)["data"][build.UNSUBSCRIBE_KEY]).decode()
    server_key = base64.b64decode(get(cp, "secret", "cmp-out-unsubscribe", SERVER_NS)["data"]["key"]).decode()
    assert copied != server_key and copied == sender_key(server_key, TENANT, TENANT_NS)

    sending = wait_for(lambda: phase_is(cp, "welcome", "Sending"), timeout=60, what="phase Sending")
    assert condition(sending, "TemplatesValid")["status"] == "True"
    assert sending["status"]["jobName"] == build.job_name("welcome") and sending["status"]["startedAt"]

    write_progress(cp, "welcome", {"total": 3, "submitted": 1, "invalid": 0, "suppressed": 0, "failed": 0,
                                   "done": False, "error": None, "invalidRows": []})
    obj = wait_for(lambda: (o := phase_is(cp, "welcome", "Sending")) and o["status"]["counters"]["sent"] == 1 and o,
                   timeout=60, what="counters from the Lease")
    assert obj["status"]["counters"]["total"] == 3 and obj["status"]["progress"] == "0%"
    # Submitted is not delivered: done with no outcome from the MTAs keeps it Sending.
    write_progress(cp, "welcome", {"total": 3, "submitted": 1, "invalid": 1, "suppressed": 1, "failed": 0,
                                   "done": True, "error": None, "invalidRows": [{"row": 2, "reason": "bad address"}]})
    obj = wait_for(lambda: phase_is(cp, "welcome", "Sending", "WaitingForOutcomes"), timeout=60,
                   what="waiting for outcomes")
    assert obj["status"]["invalidRows"] == [{"row": 2, "reason": "bad address"}]
    assert obj["status"]["progress"] == "66%" and "completedAt" not in obj["status"]
    # The last recipient's outcome: failed at submission. Now every recipient has a final outcome.
    write_progress(cp, "welcome", {"total": 3, "submitted": 0, "invalid": 1, "suppressed": 1, "failed": 1,
                                   "done": True, "error": None, "invalidRows": []})
    done = wait_for(lambda: phase_is(cp, "welcome", "Completed"), timeout=60, what="Completed")
    assert condition(done, "Ready")["status"] == "True" and done["status"]["progress"] == "100%"
    assert done["status"]["completedAt"] and done["status"]["counters"]["failed"] == 1
    columns = cp.kubectl("get", "campaign", "welcome", "-n", TENANT_NS).stdout
    assert "Completed" in columns and "100%" in columns

    cp.kubectl("delete", "campaign", "welcome", "-n", TENANT_NS)
    wait_for(lambda: find(cp, "job", build.job_name("welcome"), TENANT_NS) is None, timeout=90,
             what="the Job deleted with its Campaign")
    wait_for(lambda: find(cp, "rolebinding", sender, TENANT_NS) is None, timeout=90, what="RBAC deleted")
    assert find(cp, "persistentvolumeclaim", sender, TENANT_NS) is None or \
        find(cp, "persistentvolumeclaim", sender, TENANT_NS)["metadata"].get("deletionTimestamp")


@pytest.mark.parametrize(("name", "templates", "expected"), [
    ("syntax", {"text": "Hello {{ first_name }"}, "spec.templates.text line 1"),
    ("undefined", {"text": "Hello {{ last_name }}"}, "'last_name' is undefined"),
])
def test_template_error_sends_nothing(cluster: Any, name: str, templates: dict[str, str], expected: str) -> None:
    cp = cluster
    apply(cp, campaign(name, templates=templates))
    failed = wait_for(lambda: phase_is(cp, name, "Failed", "TemplateError"), timeout=60, what="Failed")
    valid = condition(failed, "TemplatesValid")
    assert valid["status"] == "False" and expected in valid["message"]
    assert condition(failed, "Stalled")["status"] == "True"
    # A reconcile creates the Job before it publishes the status, so a Failed status means none was made.
    assert find(cp, "job", build.job_name(name), TENANT_NS) is None
    assert find(cp, "serviceaccount", build.resource_name(name), TENANT_NS) is None
    # Fixed: the Job is made.
    apply(cp, campaign(name))
    assert wait_for(lambda: find(cp, "job", build.job_name(name), TENANT_NS), timeout=60, what="Job after the fix")
    cp.kubectl("delete", "campaign", name, "-n", TENANT_NS, "--wait=false")


def test_recipients_from_a_secret_are_checked_like_a_config_map(cluster: Any) -> None:
    """The templates are rendered against the Secret's first rows (decoded), and a missing key is named."""
    cp = cluster
    rows = "email,nickname\nann@rcpt.example.test,Annie\n"
    apply(cp, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "private-list", "namespace": TENANT_NS},
               "stringData": {"rows.csv": rows}})
    apply(cp, campaign("secret-list", recipients={"secretRef": {"name": "private-list", "key": "other.csv"}}))
    missing = wait_for(lambda: phase_is(cp, "secret-list", "Pending", "RecipientsNotFound") or
                       phase_is(cp, "secret-list", "Failed", "RecipientsNotFound"), timeout=60,
                       what="the missing key named")
    assert "Secret private-list has no key other.csv" in condition(missing, "Ready")["message"]
    apply(cp, campaign("secret-list", recipients={"secretRef": {"name": "private-list", "key": "rows.csv"}}))
    failed = wait_for(lambda: phase_is(cp, "secret-list", "Failed", "TemplateError"), timeout=60,
                      what="the Secret's rows rendered: they have no first_name")
    assert "'first_name' is undefined" in condition(failed, "TemplatesValid")["message"]
    apply(cp, campaign("secret-list", recipients={"secretRef": {"name": "private-list", "key": "rows.csv"}},
                       subject="News for {{ nickname }}", templates={"text": "Hello {{ nickname }}"}))
    assert wait_for(lambda: find(cp, "job", build.job_name("secret-list"), TENANT_NS), timeout=60,
                    what="Job once the templates render against the Secret's rows")
    cp.kubectl("delete", "campaign", "secret-list", "-n", TENANT_NS, "--wait=false")


def test_suspend_pauses_the_job_and_resumes_it(cluster: Any) -> None:
    cp = cluster
    apply(cp, campaign("paused", suspend=True))
    job = wait_for(lambda: find(cp, "job", build.job_name("paused"), TENANT_NS), timeout=60, what="Job")
    assert job["spec"]["suspend"] is True
    paused = wait_for(lambda: phase_is(cp, "paused", "Paused", "Suspended"), timeout=60, what="Paused")
    assert condition(paused, "Suspended")["status"] == "True"
    cp.kubectl("patch", "campaign", "paused", "-n", TENANT_NS, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_for(lambda: get(cp, "job", build.job_name("paused"), TENANT_NS)["spec"]["suspend"] is False, timeout=60,
             what="Job resumed")
    resumed = wait_for(lambda: phase_is(cp, "paused", "Sending"), timeout=60, what="Sending again")
    assert condition(resumed, "Suspended")["status"] == "False"

    # The tenant suspended: its campaign pauses with that reason, and resumes when it is lifted.
    cp.kubectl("patch", "tenant", TENANT, "--type=merge", "-p", '{"spec":{"suspended":true}}')
    try:
        obj = wait_for(lambda: phase_is(cp, "paused", "Paused", "TenantSuspended"), timeout=60,
                       what="paused for the tenant")
        assert condition(obj, "Suspended")["reason"] == "TenantSuspended"
        assert get(cp, "job", build.job_name("paused"), TENANT_NS)["spec"]["suspend"] is True
    finally:
        cp.kubectl("patch", "tenant", TENANT, "--type=merge", "-p", '{"spec":{"suspended":false}}')
    wait_for(lambda: phase_is(cp, "paused", "Sending"), timeout=60, what="Sending after the tenant's suspension")
    assert get(cp, "job", build.job_name("paused"), TENANT_NS)["spec"]["suspend"] is False
    cp.kubectl("delete", "campaign", "paused", "-n", TENANT_NS, "--wait=false")


def test_sender_domain_outside_the_tenant_is_refused(cluster: Any) -> None:
    cp = cluster
    apply(cp, campaign("forged", sender={"address": "news@bank.example.test"}))
    obj = wait_for(lambda: (o := find(cp, "campaign", "forged", TENANT_NS)) and condition(o, "Ready") and
                   condition(o, "Ready")["reason"] == "SenderDomainNotAllowed" and o, timeout=60, what="refused")
    assert "bank.example.test" in condition(obj, "Ready")["message"]
    assert find(cp, "job", build.job_name("forged"), TENANT_NS) is None
    cp.kubectl("delete", "campaign", "forged", "-n", TENANT_NS, "--wait=false")


def test_erase_names_every_pod_that_did_not_confirm(cluster: Any) -> None:
    """`smtp-infra tenant erase` reaches the MTA pods of the servers serving the tenant; one that does not run
    (here: a pod of the server bound to a node that does not exist, so it stays Pending) is named and the
    command fails, so the erasure is run again."""
    cp = cluster
    wait_for(lambda: find(cp, "pod", "cmp-out-0", SERVER_NS), timeout=120, what="the server's pod")
    server_pod = get(cp, "pod", "cmp-out-0", SERVER_NS)
    apply(cp, {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "cmp-out-stray", "namespace": SERVER_NS,
                            "labels": dict(server_pod["metadata"]["labels"])},
               "spec": {"nodeName": "no-such-node", "containers": [{"name": "mta", "image": "example.test/none:1"}]}})

    def erase(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "smtpinfra_cli", "tenant", "erase", *args, "--kubeconfig",
                               str(cp.kubeconfig)], capture_output=True, text=True, timeout=120, check=False)

    result = erase(TENANT, "ann@rcpt.example.test")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"NOT erased on {SERVER_NS}/cmp-out-stray: not running" in result.stderr
    missing = erase("no-such-tenant", "ann@rcpt.example.test")
    assert missing.returncode == 1 and "Tenant no-such-tenant not found" in missing.stderr
    bad = erase(TENANT, "ann@rcpt.example.test\r\nRCPT TO:<x@y>")
    assert bad.returncode == 2 and "not an address" in bad.stderr

    # Declaratively: a labelled Secret in the tenant's namespace; kept (with its addresses) while a pod has
    # not confirmed, the status annotation naming it.
    apply(cp, {"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "erase-ann", "namespace": TENANT_NS, "labels": {REQUEST_LABEL: "gdpr-42"}},
               "stringData": {"addresses": "ann@rcpt.example.test\n"}})
    noted = wait_for(lambda: (s := find(cp, "secret", "erase-ann", TENANT_NS)) and
                     (s["metadata"].get("annotations") or {}).get(STATUS_ANNOTATION) and s, timeout=60,
                     what="erasure request processed")
    note = noted["metadata"]["annotations"][STATUS_ANNOTATION]
    assert note.startswith("pending ") and f"{SERVER_NS}/cmp-out-stray" in note.partition("not confirmed by ")[2]
    assert noted["data"]["addresses"]  # nothing emptied before every pod erased the address
    cp.kubectl("delete", "pod", "cmp-out-stray", "-n", SERVER_NS, "--grace-period=0", "--force", "--wait=false")
