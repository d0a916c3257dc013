"""A rolling update of the MTA StatefulSet under steady submission load loses no acknowledged message.

Clients submit continuously (authenticated, over STARTTLS, to each pod IP) while a listener
change rolls the pods. The MTA drains on SIGTERM (new sessions get 421, sessions in flight
finish), its queue stays on the replica's volume, and the next pod delivers what was queued.
So that mail IS queued at SIGTERM, the remote MX defers every recipient (4xx) until the first old
pod is told to stop; from then on it accepts. The MTA retries a deferral after a minute, so the
successors' own startup scans ("spool recovered" in their logs) deliver what the old pods left.
Afterwards every message that got a 250 is at the sink, counted by Message-ID.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import threading
import time
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.common import NS, RCPT_DOMAIN, SENDER_DOMAIN
from tests.e2e.test_smtpserver import pods, server_manifest, tenant_password
from tests.kube import apply, get, wait_for
from tests.mta.conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.operator]

SINK_ADDR = "127.0.20.43"


def submit_forever(host: str, password: str, stop: threading.Event, acked: list[str], refused: list[str]) -> None:
    """Submit one message per session until stopped; record the Message-IDs acknowledged with 250."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    while not stop.is_set():
        message_id = f"<{uuid.uuid4().hex}@{SENDER_DOMAIN}>"
        msg = EmailMessage()
        msg["From"] = f"load@{SENDER_DOMAIN}"
        msg["To"] = f"load@{RCPT_DOMAIN}"
        msg["Subject"] = "rolling update load"
        msg["Message-ID"] = message_id
        msg.set_content("x" * 512)
        try:
            with smtplib.SMTP(host, 587, timeout=20) as client:
                client.starttls(context=context)
                client.login("e2e-acme", password)
                client.send_message(msg)
            acked.append(message_id)
        except (OSError, smtplib.SMTPException) as error:
            refused.append(f"{type(error).__name__}: {error}")
            time.sleep(0.2)  # the pod is restarting: try again shortly


def recovered_at_startup(pod_runner: Any, pod: str, since: dict[Path, int]) -> int:
    """Messages the MTA processes of `pod` found in their spool at startup, logged after the `since` offsets."""
    total = 0
    for path in sorted(pod_runner.log_path(NS, pod, "any").parent.glob("*.log")):
        with path.open("rb") as f:
            f.seek(since.get(path, 0))
            for line in f.read().decode(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("msg") == "spool recovered":
                    total += int(entry.get("messages", 0))
    return total


def log_sizes(pod_runner: Any, pod_names: list[str]) -> dict[Path, int]:
    paths = [p for pod in pod_names for p in pod_runner.log_path(NS, pod, "any").parent.glob("*.log")]
    return {p: p.stat().st_size for p in paths}


def test_rolling_update_under_load_loses_nothing(platform, knot, sink_factory, pod_runner):
    cp = platform
    sink_port = free_port(SINK_ADDR)
    deferring = sink_factory("-r", "RCPT", addr=SINK_ADDR, port=sink_port, name="deferring")
    knot.foreign_update("example.test", delete=[(RCPT_DOMAIN, "MX")],
                        add=[(RCPT_DOMAIN, 60, "MX", "10 rolling-sink.example.test."),
                             ("rolling-sink.example.test", 60, "A", SINK_ADDR)])
    manifest = server_manifest("rolling", knot, sink_port, replicas=2, pools=["rolling-pool"])
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": "rolling-pool"},
               "spec": {"addresses": ["127.0.24.1", "127.0.24.2"]}})
    apply(cp, manifest)
    cp.kubectl("-n", NS, "wait", "--for=condition=Ready", "smtpserver/rolling", "--timeout=120s")
    before = get(cp, "statefulset", "rolling", NS)["status"].get("updateRevision")
    password = tenant_password(cp)
    old_uids = set(pod_uids(cp).values())
    stop = threading.Event()
    acked: list[str] = []
    refused: list[str] = []
    threads = [threading.Thread(target=submit_forever, args=(ip, password, stop, acked, refused), daemon=True)
               for ip in pods(cp, "rolling").values() for _ in range(2)]
    for t in threads:
        t.start()
    sink = None
    try:
        wait_for(lambda: len(acked) >= 20, timeout=60, what="load running")
        assert deferring.messages() == [], "the remote MX defers: nothing is delivered yet"
        logs_before = log_sizes(pod_runner, ["rolling-0", "rolling-1"])
        manifest["spec"]["listeners"] = {"maxRecipients": 50}  # not reloadable: rolls the pods
        apply(cp, manifest)
        wait_for(lambda: get(cp, "statefulset", "rolling", NS)["status"].get("updateRevision") != before,
                 timeout=60, what="a new revision")
        # the first old pod is being stopped with deferred mail in its queue: now the remote MX accepts
        wait_for(lambda: stopping_or_replaced(cp, old_uids), timeout=60, interval=0.1, what="an old pod stopping")
        deferring.stop()
        sink = sink_factory(addr=SINK_ADDR, port=sink_port, name="rolling")
        cp.kubectl("-n", NS, "rollout", "status", "statefulset/rolling", "--timeout=180s")
        cp.kubectl("-n", NS, "wait", "--for=condition=Ready", "smtpserver/rolling", "--timeout=120s")
        count_after_roll = len(acked)
        wait_for(lambda: len(acked) >= count_after_roll + 10, timeout=60, what="load after the roll")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert len(pods(cp, "rolling")) == 2
    assert not old_uids & set(pod_uids(cp).values()), "every pod was replaced"
    assert refused, "the roll should have refused or cut some sessions (otherwise nothing was tested)"
    # the successors found mail the old pods had queued (and acknowledged) when they were stopped
    recovered = {pod: recovered_at_startup(pod_runner, pod, logs_before) for pod in ("rolling-0", "rolling-1")}
    assert sum(recovered.values()) > 0, f"nothing was queued at SIGTERM, nothing tested: {recovered}"
    print(f"acknowledged {len(acked)}, recovered by the successors {recovered}, refused {len(refused)}")
    assert sink is not None

    def delivered() -> set[str]:
        ids = set()
        for m in sink.messages():
            for line in m.content.split(b"\r\n"):
                if line.lower().startswith(b"message-id:"):
                    ids.add(line.split(b":", 1)[1].strip().decode())
        return ids

    wait_for(lambda: set(acked) <= delivered(), timeout=120, interval=1,
             what=f"all {len(acked)} acknowledged messages at the sink")


def pod_uids(cp: Any) -> dict[str, str]:
    out = json.loads(cp.kubectl("-n", NS, "get", "pods", "-l", "app.kubernetes.io/instance=rolling",
                                "-o", "json").stdout)
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in out["items"]}


def stopping_or_replaced(cp: Any, old_uids: set[str]) -> bool:
    """An old pod has been told to stop (deletionTimestamp: SIGTERM) or is already gone."""
    out = json.loads(cp.kubectl("-n", NS, "get", "pods", "-l", "app.kubernetes.io/instance=rolling",
                                "-o", "json").stdout)
    return any(p["metadata"].get("deletionTimestamp") or p["metadata"]["uid"] not in old_uids
               for p in out["items"]) or len(out["items"]) < len(old_uids)
