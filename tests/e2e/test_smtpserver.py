"""End to end: IpPool + Tenant + SmtpServer → real MTA pods (local runner) → smtp-sink.

The pod spec the operator writes is what runs: the local pod runner starts the container's
command with its env and mounted ConfigMap/Secrets, bound to the pod IP. Mail is submitted
with swaks using the credentials the operator generated, delivered via MX from a real Knot
server to Postfix's smtp-sink, and the DKIM signature is verified with the operator's key.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from typing import Any

import dkim
import pytest

from tests.dns.knot import FORWARD_ZONE, KnotServer
from tests.e2e.common import NS, POOL_ADDRESSES, RCPT_DOMAIN, SENDER_DOMAIN, SINK_ADDR
from tests.kube import apply, condition, find, get, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.operator]



def server_manifest(name: str, knot: KnotServer, sink_port: int, replicas: int = 2,
                    pools: list[str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "smtpinfra.com/v1alpha1", "kind": "SmtpServer",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "hostname": "smtp.e2e.example.test", "replicas": replicas, "ipPools": pools or ["e2e-pool"],
            "returnPathDomain": f"bounces.{FORWARD_ZONE}",
            "tls": {"secretName": "mta-tls"},
            "dkim": {"keys": [{"domain": SENDER_DOMAIN, "selector": "rsa1"},
                              {"domain": SENDER_DOMAIN, "selector": "ed1", "algorithm": "ed25519-sha256"}]},
            "tenantSelector": {"matchLabels": {"tier": "e2e"}},
            "delivery": {"resolver": {"address": knot.address, "port": knot.port}, "remotePort": sink_port},
        },
    }


def tenant_password(cp: Any) -> str:
    secret = get(cp, "secret", "smtp-credentials", "tenant-e2e-acme")
    return base64.b64decode(secret["data"]["password"]).decode()


def swaks(server: str, password: str, *, sender: str = f"news@{SENDER_DOMAIN}",
          to: str = f"someone@{RCPT_DOMAIN}", subject: str = "hello") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--server", server, "--tls", "--auth", "PLAIN", "--auth-user", "e2e-acme",
         "--auth-password", password, "--from", sender, "--to", to, "--h-From", sender,
         "--h-Subject", subject, "--timeout", "20"],
        capture_output=True, text=True, timeout=60)


def pods(cp: Any, server: str) -> dict[str, str]:
    out = json.loads(cp.kubectl("-n", NS, "get", "pods", "-l", f"app.kubernetes.io/instance={server}",
                                "-o", "json").stdout)
    return {p["metadata"]["name"]: p["status"].get("podIP", "") for p in out["items"]}


def dkim_dns(cp: Any, server: str) -> dict[bytes, bytes]:
    """selector._domainkey.domain → TXT value, from the Secrets the operator generated for `server`."""
    out = json.loads(cp.kubectl("-n", NS, "get", "secrets", "-o", "json").stdout)
    records = {}
    for s in out["items"]:
        if not s["metadata"]["name"].startswith(f"{server}-dkim-"):
            continue
        ann = s["metadata"].get("annotations") or {}
        if "smtpinfra.com/dkim-selector" in ann:
            name = f"{ann['smtpinfra.com/dkim-selector']}._domainkey.{ann['smtpinfra.com/dkim-domain']}."
            records[name.encode()] = base64.b64decode(s["data"]["dns.txt"])
    return records


def test_mail_flows_from_each_replica_via_its_pool_address_dkim_signed(platform, knot, sink_factory):
    cp = platform
    sink = sink_factory(addr=SINK_ADDR)
    apply(cp, server_manifest("outbound", knot, sink.port))
    result = cp.kubectl("-n", NS, "wait", "--for=condition=Ready", "smtpserver/outbound", "--timeout=120s",
                        check=False)
    assert result.returncode == 0, result.stderr + str(get(cp, "smtpserver", "outbound", NS).get("status"))
    server = get(cp, "smtpserver", "outbound", NS)
    sending = {a["replica"]: a for a in server["status"]["sendingAddresses"]}
    assert {a["address"] for a in sending.values()} == set(POOL_ADDRESSES[:2])
    password = tenant_password(cp)
    ips = pods(cp, "outbound")
    for ordinal in (0, 1):
        result = swaks(f"{ips[f'outbound-{ordinal}']}:587", password, subject=f"replica {ordinal}")
        assert "250 2.0.0" in result.stdout, result.stdout + result.stderr
    messages = sink.wait_messages(2, timeout=60)
    by_subject = {}
    for m in messages:
        subject = next(line for line in m.content.split(b"\r\n") if line.lower().startswith(b"subject:"))
        by_subject[subject.split(b":", 1)[1].strip().decode()] = m
    records = dkim_dns(cp, "outbound")
    assert len(records) == 2
    for ordinal in (0, 1):
        message = by_subject[f"replica {ordinal}"]
        assert message.client_addr == sending[ordinal]["address"]
        assert message.helo == sending[ordinal]["ehloName"]
        signatures = message.content.count(b"DKIM-Signature:")
        assert signatures == 2
        for index in range(signatures):
            verifier = dkim.DKIM(message.content)
            assert verifier.verify(idx=index, dnsfunc=lambda name, timeout=5: records.get(name)), \
                f"signature {index} of replica {ordinal} does not verify"
    listed = cp.kubectl("get", "smtpinfra", "-A").stdout
    assert "smtpserver.smtpinfra.com/outbound" in listed


def test_hand_deleted_children_are_restored(platform, knot):
    cp = platform
    apply(cp, server_manifest("restore", knot, 2525, replicas=0))
    wait_for(lambda: find(cp, "statefulset", "restore", NS), what="statefulset", timeout=60)
    config = wait_for(lambda: find(cp, "configmap", "restore-config", NS), what="config map", timeout=60)
    service = wait_for(lambda: find(cp, "service", "restore-submission", NS), what="service", timeout=60)
    cp.kubectl("-n", NS, "delete", "configmap", "restore-config")
    cp.kubectl("-n", NS, "delete", "service", "restore-submission")
    cp.kubectl("-n", NS, "patch", "statefulset", "restore", "--type=merge", "-p", '{"spec":{"replicas":3}}')
    new_config = wait_for(lambda: find(cp, "configmap", "restore-config", NS), what="config map restored", timeout=30)
    new_service = wait_for(lambda: find(cp, "service", "restore-submission", NS), what="service restored", timeout=30)
    wait_for(lambda: get(cp, "statefulset", "restore", NS)["spec"]["replicas"] == 0, what="replicas restored",
             timeout=30)
    # recreated (new objects), with what the operator wrote before
    assert new_config["metadata"]["uid"] != config["metadata"]["uid"]
    assert new_config.get("data", {}) == config.get("data", {})
    assert new_service["metadata"]["uid"] != service["metadata"]["uid"]
    assert new_service["spec"]["ports"] == service["spec"]["ports"]


def server_applies(cp: Any) -> dict[str, float]:
    """kube-apiserver's count of server-side applies per resource (its own metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(cp.kubectl("get", "--raw", "/metrics").stdout):
        if family.name == "apiserver_request":
            for sample in family.samples:
                if sample.name == "apiserver_request_total" and sample.labels.get("verb") == "APPLY":
                    resource = sample.labels.get("resource", "")
                    counts[resource] = counts.get(resource, 0.0) + sample.value
    return counts


def test_a_resync_of_unchanged_servers_applies_nothing_and_hand_edits_are_restored(platform, knot):
    """Children are applied again only when someone changed them: with nothing changed, three
    resync periods make no server-side apply. A child edited or deleted by hand is restored at
    once, from the watch on our children: the full resync of a Ready server comes only every
    SMTP_INFRA_FULL_RESYNC_SECONDS (300 s), far beyond these waits."""
    cp = platform
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": "steady-pool"},
               "spec": {"addresses": ["127.0.24.1"]}})
    apply(cp, server_manifest("steady", knot, 2525, replicas=1, pools=["steady-pool"]))
    wait_for(lambda: (o := get(cp, "smtpserver", "steady", NS)) and condition(o, "Ready")
             and condition(o, "Ready")["status"] == "True", what="steady Ready", timeout=60)
    kinds = ("configmaps", "secrets", "services", "statefulsets")
    before = server_applies(cp)
    assert all(before.get(k, 0) > 0 for k in kinds), before
    time.sleep(6)  # three resync periods (SMTP_INFRA_RESYNC_SECONDS=2 in tests)
    after = server_applies(cp)
    assert {k: after.get(k, 0) - before.get(k, 0) for k in kinds} == dict.fromkeys(kinds, 0)

    rendered = get(cp, "configmap", "steady-config", NS)["data"]
    key = sorted(rendered)[0]
    cp.kubectl("-n", NS, "patch", "configmap", "steady-config", "--type=merge",
               "-p", json.dumps({"data": {key: "edited by hand"}}))
    wait_for(lambda: get(cp, "configmap", "steady-config", NS)["data"] == rendered, what="config restored",
             timeout=30)
    cp.kubectl("-n", NS, "delete", "secret", "steady-credentials")
    wait_for(lambda: find(cp, "secret", "steady-credentials", NS), what="credentials restored", timeout=30)


def test_missing_pool_then_appearing(platform, knot):
    cp = platform
    apply(cp, server_manifest("late", knot, 2525, replicas=1, pools=["late-pool"]))
    obj = wait_for(lambda: (o := get(cp, "smtpserver", "late", NS)) and condition(o, "Ready") and
                   condition(o, "Ready")["reason"] == "IpPoolNotFound" and o, what="IpPoolNotFound", timeout=60)
    assert "IpPool late-pool (spec.ipPools) not found" in condition(obj, "Ready")["message"]
    assert condition(obj, "Stalled")["status"] == "True"
    assert find(cp, "statefulset", "late", NS) is None, "nothing is created while a reference is missing"
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": "late-pool"},
               "spec": {"addresses": ["127.0.21.1"]}})
    cp.kubectl("-n", NS, "wait", "--for=condition=Ready", "smtpserver/late", "--timeout=90s")


def test_pool_too_small_runs_what_it_can_and_recovers(platform, knot):
    cp = platform
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": "small-pool"},
               "spec": {"addresses": ["127.0.22.1"]}})
    apply(cp, server_manifest("small", knot, 2525, replicas=2, pools=["small-pool"]))
    obj = wait_for(lambda: (o := get(cp, "smtpserver", "small", NS)) and condition(o, "Ready") and
                   condition(o, "Ready")["reason"] == "PoolTooSmall" and o, what="PoolTooSmall", timeout=60)
    assert "IpPool small-pool has no free address for replica 1" in condition(obj, "Ready")["message"]
    # the pool publishes what the servers derived a moment later (IpPool PUBLISH_DELAY)
    wait_for(lambda: (c := condition(get(cp, "ippool", "small-pool"), "Ready")) is not None
             and c["reason"] == "PoolExhausted",
             what="the pool reporting PoolExhausted", timeout=30)
    wait_for(lambda: get(cp, "statefulset", "small", NS)["spec"]["replicas"] == 1, what="one replica", timeout=30)
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": "small-pool"},
               "spec": {"addresses": ["127.0.22.1", "127.0.22.2"]}})
    cp.kubectl("-n", NS, "wait", "--for=condition=Ready", "smtpserver/small", "--timeout=90s")
    assert get(cp, "statefulset", "small", NS)["spec"]["replicas"] == 2


def test_scaling_keeps_addresses_stable(platform, knot):
    cp = platform
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": "scale-pool"},
               "spec": {"addresses": ["127.0.23.0/30"]}})  # .1 and .2
    apply(cp, server_manifest("scale", knot, 2525, replicas=1, pools=["scale-pool"]))
    cp.kubectl("-n", NS, "wait", "--for=condition=Ready", "smtpserver/scale", "--timeout=90s")
    first = get(cp, "smtpserver", "scale", NS)["status"]["sendingAddresses"]
    assert [a["address"] for a in first] == ["127.0.23.1"]
    apply(cp, server_manifest("scale", knot, 2525, replicas=2, pools=["scale-pool"]))
    wait_for(lambda: len(get(cp, "smtpserver", "scale", NS)["status"]["sendingAddresses"]) == 2, timeout=60,
             what="two addresses")
    both = {a["replica"]: a["address"] for a in get(cp, "smtpserver", "scale", NS)["status"]["sendingAddresses"]}
    assert both == {0: "127.0.23.1", 1: "127.0.23.2"}
    apply(cp, server_manifest("scale", knot, 2525, replicas=1, pools=["scale-pool"]))
    wait_for(lambda: len(get(cp, "smtpserver", "scale", NS)["status"]["sendingAddresses"]) == 1, timeout=60,
             what="one address")
    assert get(cp, "smtpserver", "scale", NS)["status"]["sendingAddresses"][0]["address"] == "127.0.23.1"
    pool = get(cp, "ippool", "scale-pool")
    owners = {a["address"]: a.get("assignedTo") for a in pool["status"]["addresses"]}
    assert owners == {"127.0.23.1": f"{NS}/scale/0", "127.0.23.2": None}


def test_suspending_the_tenant_reaches_the_running_mta(platform, knot, sink_factory):
    """A Tenant change re-renders the config; the MTA reloads it without a restart."""
    cp = platform
    cp.kubectl("-n", NS, "wait", "--for=condition=Ready", "smtpserver/outbound", "--timeout=120s")
    before = {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"]
              for p in json.loads(cp.kubectl("-n", NS, "get", "pods", "-l", "app.kubernetes.io/instance=outbound",
                                             "-o", "json").stdout)["items"]}
    cp.kubectl("patch", "tenant", "e2e-acme", "--type=merge", "-p", '{"spec":{"suspended":true}}')
    password = tenant_password(cp)
    ip = pods(cp, "outbound")["outbound-0"]
    try:
        result = wait_for(lambda: (r := swaks(f"{ip}:587", password)) and "550 5.7.1" in r.stdout and r,
                          timeout=60, interval=1, what="suspended tenant refused")
        assert "suspended" in result.stdout.lower()
    finally:
        cp.kubectl("patch", "tenant", "e2e-acme", "--type=merge", "-p", '{"spec":{"suspended":false}}')
    after = {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"]
             for p in json.loads(cp.kubectl("-n", NS, "get", "pods", "-l", "app.kubernetes.io/instance=outbound",
                                            "-o", "json").stdout)["items"]}
    assert after == before, "a tenant change must be reloaded, not restart the pods"


def test_a_tenant_claiming_anothers_domain_is_not_served(platform, knot):
    """The older tenant keeps its sender domain; the newcomer is reported, the server keeps working."""
    cp = platform
    cp.kubectl("-n", NS, "wait", "--for=condition=Ready", "smtpserver/outbound", "--timeout=120s")
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Tenant",
               "metadata": {"name": "e2e-copycat", "labels": {"tier": "e2e"}},
               "spec": {"displayName": "Copycat", "senderDomains": [SENDER_DOMAIN]}})
    try:
        obj = wait_for(lambda: (o := get(cp, "smtpserver", "outbound", NS)) and condition(o, "TenantsServed") and
                       condition(o, "TenantsServed")["status"] == "False" and o, timeout=60,
                       what="TenantsServed=False")
        assert condition(obj, "TenantsServed")["reason"] == "SenderDomainConflict"
        assert (f"Tenant e2e-copycat is not served: sender domain {SENDER_DOMAIN} belongs to Tenant e2e-acme"
                in condition(obj, "TenantsServed")["message"])
        assert condition(obj, "Ready")["status"] == "True"
        config = get(cp, "configmap", "outbound-config", NS)["data"]["outbound-0.yaml"]
        assert "e2e-copycat" not in config and "e2e-acme" in config
    finally:
        cp.kubectl("delete", "tenant", "e2e-copycat", "--wait=false")
    wait_for(lambda: condition(get(cp, "smtpserver", "outbound", NS), "TenantsServed")["status"] == "True",
             timeout=60, what="TenantsServed=True again")


def test_operator_restart_resumes_without_duplicates(operator, platform, knot):
    cp = platform
    apply(cp, server_manifest("restart", knot, 2525, replicas=0))
    wait_for(lambda: (o := get(cp, "smtpserver", "restart", NS)).get("status", {}).get("observedGeneration")
             == o["metadata"]["generation"], timeout=60, what="first reconcile done")
    uids = {s["metadata"]["name"]: s["metadata"]["uid"]
            for s in json.loads(cp.kubectl("-n", NS, "get", "secrets", "-o", "json").stdout)["items"]
            if s["metadata"]["name"].startswith("restart-")}
    operator.stop()
    manifest = server_manifest("restart", knot, 2525, replicas=0)
    manifest["spec"]["listeners"] = {"maxRecipients": 50}
    apply(cp, manifest)
    operator.start()
    wait_for(lambda: (o := get(cp, "smtpserver", "restart", NS))["status"].get("observedGeneration")
             == o["metadata"]["generation"], timeout=60, what="observedGeneration after restart")
    again = {s["metadata"]["name"]: s["metadata"]["uid"]
             for s in json.loads(cp.kubectl("-n", NS, "get", "secrets", "-o", "json").stdout)["items"]
             if s["metadata"]["name"].startswith("restart-")}
    assert len(uids) == 6  # two DKIM keys, the VERP and unsubscribe keys, the credentials and the /stats token Secrets
    assert again == uids, "keys and credentials must not be regenerated"
    config = get(cp, "configmap", "restart-config", NS)
    assert config.get("data", {}) == {}  # zero replicas, nothing rendered


def test_deleting_the_server_garbage_collects_its_children(platform, knot):
    cp = platform
    apply(cp, server_manifest("doomed", knot, 2525, replicas=0))
    wait_for(lambda: find(cp, "statefulset", "doomed", NS), what="statefulset", timeout=60)
    children = [("statefulset", "doomed"), ("configmap", "doomed-config"), ("service", "doomed-submission"),
                ("secret", "doomed-credentials")]
    server_uid = get(cp, "smtpserver", "doomed", NS)["metadata"]["uid"]
    for kind, name in children:  # first they exist, owned by the server
        child = wait_for(lambda k=kind, n=name: find(cp, k, n, NS),  # type: ignore[misc]
                         what=f"{kind}/{name} created", timeout=60)
        assert [r["uid"] for r in child["metadata"].get("ownerReferences", [])] == [server_uid], (kind, name)
    cp.kubectl("-n", NS, "delete", "smtpserver", "doomed", "--timeout=30s")
    for kind, name in children:
        wait_for(lambda k=kind, n=name: find(cp, k, n, NS) is None,  # type: ignore[misc]
                 what=f"{kind}/{name} collected", timeout=60)
