"""End to end: one VERP key per SmtpServer, so a bounce reaching any replica is matched (issue 11, item 9).

Real MTA pods (local pod runner) of a two-replica server: replica 0 sends, the DSN arrives on port 25
of replica 1, which matches it and suppresses the recipient. Then `smtp-infra verp rotate` gives the
server a new key: once the pods have re-read the mounted Secret they sign with it, and replica 1
matches bounces of mail signed with the new key and with the previous one.
"""

from __future__ import annotations

import base64
import json
import smtplib
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from smtpinfra_mta.verp import Verp
from tests.dns.knot import FORWARD_ZONE
from tests.e2e.common import NS, RCPT_DOMAIN, SINK_ADDR
from tests.e2e.test_smtpserver import pods, server_manifest, swaks, tenant_password
from tests.kube import apply, get, wait_for
from tests.mta.test_feedback import dsn

pytestmark = [pytest.mark.e2e, pytest.mark.operator]

SERVER = "verp"
TENANT = "e2e-acme"
RP = f"bounces.{FORWARD_ZONE}"


def _keys(cp: Any) -> dict[str, bytes]:
    secret = get(cp, "secret", f"{SERVER}-verp", NS)
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def _delivery_metric(ip: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of a counter on a pod's delivery process (/metrics on 8081), over the samples matching ``labels``."""
    with urllib.request.urlopen(f"http://{ip}:8081/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()))


def _queued(cp: Any, ip: str) -> int:
    """Messages queued on a pod's receiving side (its /stats, with the operator's token), inbound reports
    included until handled."""
    token = base64.b64decode(get(cp, "secret", f"{SERVER}-stats-token", NS)["data"]["token"]).decode()
    req = urllib.request.Request(f"http://{ip}:8080/stats", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return int(json.load(r)["queue"]["messages"])


def _bounce(ip: str, return_path: str, rcpt: str) -> None:
    with smtplib.SMTP(ip, 25, local_hostname="mx.example.test", timeout=60) as s:
        s.ehlo()
        s.mail("")
        assert s.rcpt(return_path)[0] == 250
        code, text = s.data(dsn(return_path, rcpt, "5.1.1", "550 5.1.1 User unknown").encode())
        assert code == 250, text


def _send(ip: str, password: str, rcpt: str) -> None:
    result = swaks(f"{ip}:587", password, to=rcpt)
    assert "250 2.0.0" in result.stdout, result.stdout + result.stderr


def test_a_bounce_on_another_replica_matches_before_and_after_a_rotation(platform, knot, sink_factory):
    cp = platform
    sink = sink_factory(addr=SINK_ADDR)
    apply(cp, server_manifest(SERVER, knot, sink.port))
    result = cp.kubectl("-n", NS, "wait", "--for=condition=Ready", f"smtpserver/{SERVER}", "--timeout=120s",
                        check=False)
    assert result.returncode == 0, result.stderr + str(get(cp, "smtpserver", SERVER, NS).get("status"))
    ips = pods(cp, SERVER)
    r0, r1 = ips[f"{SERVER}-0"], ips[f"{SERVER}-1"]
    password = tenant_password(cp)

    gone, later = f"gone@{RCPT_DOMAIN}", f"later@{RCPT_DOMAIN}"
    _send(r0, password, gone)
    _send(r0, password, later)
    sent = {m.rcpts[0]: m.mail_from for m in sink.wait_messages(2, timeout=60)}

    # the DSN for replica 0's mail reaches replica 1: once it is handled (its queue is empty again),
    # replica 1 holds the recipient suppressed and does not send to it
    _bounce(r1, sent[gone], gone)
    wait_for(lambda: _queued(cp, r1) == 0, timeout=60, what="replica 1 handles the bounce")
    _send(r1, password, gone)
    wait_for(lambda: _delivery_metric(r1, "smtpinfra_mta_suppressed_total") == 1 or len(sink.messages()) > 2,
             timeout=60, what="replica 1 is done with the message to the bounced recipient")
    assert len(sink.messages()) == 2, "replica 1 sent to a recipient bounced on replica 0's mail"
    assert _delivery_metric(r1, "smtpinfra_mta_suppressed_total") == 1
    assert _delivery_metric(r1, "smtpinfra_mta_inbound_reports_total", {"outcome": "matched"}) == 1

    # because both replicas sign with the server's one key, from its Secret
    keys = _keys(cp)
    assert list(keys) == ["current"]
    old_key = keys["current"]
    assert sent[gone] == Verp(old_key, RP).address(TENANT, gone)

    # rotation: a new current key, the old one kept as previous
    rotate = subprocess.run([str(Path(sys.executable).parent / "smtp-infra"), "verp", "rotate", SERVER,
                             "-n", NS, "--kubeconfig", str(cp.kubeconfig)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert rotate.returncode == 0, rotate.stdout + rotate.stderr
    keys = _keys(cp)
    assert keys["previous"] == old_key and keys["current"] != old_key
    new = Verp(keys["current"], RP)

    # each replica re-reads the mounted Secret on its own: poll until both sign with the new key
    attempt = [0]

    def signs_with_new_key(ip: str) -> str | None:
        """Send one message; its recipient when its return path is signed with the new key."""
        attempt[0] += 1
        rcpt = f"probe{attempt[0]}@{RCPT_DOMAIN}"
        _send(ip, password, rcpt)
        got = {m.rcpts[0]: m.mail_from for m in sink.wait_messages(2 + attempt[0], timeout=60)}
        return rcpt if got[rcpt] == new.address(TENANT, rcpt) else None

    fresh = wait_for(lambda: signs_with_new_key(r0), timeout=120, interval=2, what="replica 0 uses the new key")
    wait_for(lambda: signs_with_new_key(r1), timeout=120, interval=2, what="replica 1 uses the new key")

    # replica 1 matches a bounce signed with the new key (by replica 0) and one signed before the rotation
    _bounce(r1, new.address(TENANT, fresh), fresh)
    _bounce(r1, sent[later], later)
    wait_for(lambda: _delivery_metric(r1, "smtpinfra_mta_inbound_reports_total", {"outcome": "matched"}) == 3,
             timeout=60, what="replica 1 matches both keys' bounces")
    assert _delivery_metric(r1, "smtpinfra_mta_inbound_reports_total", {"outcome": "quarantined"}) == 0

