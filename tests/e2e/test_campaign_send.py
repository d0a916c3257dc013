"""End to end: a Campaign → the operator's sender Job really runs (local pod runner) → the tenant's MTA pod →
smtp-sink, exactly once per recipient, RFC 8058 headers DKIM-signed, and the Campaign Completed with the counters
the sink saw.

Nothing is simulated: the Job's pod runs `smtp-infra campaign send` (its image starts with ``smtp-infra/``), reads
the ConfigMap list with its ServiceAccount, reaches the submission Service by name (the pod runner's /etc/hosts
stands in for cluster DNS + kube-proxy), verifies the server's certificate with the CA the operator copied from
the server's TLS Secret, and submits with the tenant's credentials. The MTA relays by MX (Knot) to smtp-sink.

The list size is SMTP_INFRA_E2E_CAMPAIGN_RECIPIENTS (default 2,000).
"""

from __future__ import annotations

import collections
import datetime
import email
import email.policy
import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smtpinfra_campaign.ledger import open_ledger
from smtpinfra_operator.campaigns import job as build
from tests.e2e.common import NS, RCPT_DOMAIN, SENDER_DOMAIN, SINK_ADDR
from tests.e2e.test_smtpserver import dkim_dns, pods, server_manifest
from tests.kube import apply, condition, find, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.operator]

TENANT, TENANT_NS = "e2e-acme", "tenant-e2e-acme"
SERVER, UNSUB_SERVER, CAMPAIGN, LIST = "csend", "cunsub", "csend", "csend-list"
COUNT = int(os.environ.get("SMTP_INFRA_E2E_CAMPAIGN_RECIPIENTS", "2000"))


def server_certificate(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate for the server's names (its Secret has no ca.crt: tls.crt is the anchor)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return directory / "tls.crt", directory / "tls.key"


def recipients_csv(count: int) -> str:
    rows = ["email,first_name,code"] + [f"r{i:05d}@{RCPT_DOMAIN},Name{i},C{i:05d}" for i in range(count)]
    return "\n".join(rows) + "\n"


def text_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None, "no text/plain part"
    return str(part.get_content())


def signed_headers(raw: bytes) -> list[set[str]]:
    """The h= lists of every DKIM-Signature of a message, lower-cased."""
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    out = []
    for value in parsed.get_all("DKIM-Signature") or []:
        found = re.search(r"\bh=([^;]*)", re.sub(r"\s+", "", str(value)))
        assert found, value
        out.append({h.strip().lower() for h in found.group(1).split(":")})
    return out


def start_server(cp: Any, knot: Any, sink_port: int, directory: Path, server: str) -> None:
    """The MTA (one pod), Ready, with a certificate naming its spec.hostname only, as a public one would:
    the sender connects through the submission Service and verifies the certificate for that name."""
    cert, key = server_certificate(directory, ["smtp.e2e.example.test"])
    cp.kubectl("-n", NS, "delete", "secret", f"{server}-tls", "--ignore-not-found")
    cp.kubectl("-n", NS, "create", "secret", "tls", f"{server}-tls", f"--cert={cert}", f"--key={key}")
    manifest = server_manifest(server, knot, sink_port, replicas=1)
    manifest["spec"]["tls"] = {"secretName": f"{server}-tls"}
    apply(cp, manifest)
    wait_for(lambda: cp.kubectl("-n", NS, "wait", "--for=condition=Ready", f"smtpserver/{server}", "--timeout=60s",
                                check=False).returncode == 0, timeout=240, interval=1, what="the SmtpServer Ready")


def send_campaign(cp: Any, name: str, count: int, server: str = SERVER) -> dict[str, Any]:
    """A campaign to the first `count` rows of the list; the Campaign once Completed or Failed."""
    apply(cp, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": LIST, "namespace": TENANT_NS},
               "data": {"rows.csv": recipients_csv(count)}})
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Campaign",
               "metadata": {"name": name, "namespace": TENANT_NS},
               "spec": {"tenant": TENANT, "serverRef": {"name": server, "namespace": NS},
                        "sender": {"address": f"news@{SENDER_DOMAIN}", "name": "ACME News"},
                        "subject": "News for {{ first_name }}",
                        "templates": {"text": "Hello {{ first_name }}, your code is {{ code }}.",
                                      "html": "<p>Hello {{ first_name }}, your code is {{ code }}.</p>"},
                        "recipients": {"configMapRef": {"name": LIST, "key": "rows.csv"}},
                        "rate": {"messagesPerMinute": 1_000_000},
                        "unsubscribe": {"url": "https://smtp.e2e.example.test/u",
                                        "mailto": f"unsubscribe@{SENDER_DOMAIN}"},
                        "postalAddress": "1 Main Street, Springfield"}})
    job = wait_for(lambda: find(cp, "job", build.job_name(name), TENANT_NS), timeout=90, what="sender Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("smtp-infra/"), "the Job must run the project's image (pod runner)"
    done: dict[str, Any] = wait_for(lambda: (o := find(cp, "campaign", name, TENANT_NS)) and
                                    (o.get("status") or {}).get("phase") in ("Completed", "Failed") and o,
                                    timeout=300 + count * 0.5, interval=2, what=f"Campaign {name} finished")
    return done


def test_campaign_is_sent_by_its_job_exactly_once_per_recipient(platform: Any, knot: Any, sink_factory: Any,
                                                                 pod_runner: Any, tmp_path: Path) -> None:
    cp = platform
    sink = sink_factory(addr=SINK_ADDR)
    start_server(cp, knot, sink.port, tmp_path, SERVER)
    try:
        done = send_campaign(cp, CAMPAIGN, COUNT)
        assert done["status"]["phase"] == "Completed", done["status"]
        assert condition(done, "TemplatesValid")["status"] == "True"

        messages = sink.messages()
        per_recipient = collections.Counter(r for m in messages for r in m.rcpts)
        expected = {f"r{i:05d}@{RCPT_DOMAIN}" for i in range(COUNT)}
        assert set(per_recipient) == expected
        assert [r for r, n in per_recipient.items() if n != 1] == []
        assert len(messages) == COUNT

        records = dkim_dns(cp, SERVER)
        for m in messages:
            parsed = email.message_from_bytes(m.content, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            rcpt = m.rcpts[0]
            index = int(rcpt[1:6])
            assert f"Hello Name{index}, your code is C{index:05d}." in text_part(parsed)
            assert str(parsed["Subject"]) == f"News for Name{index}"
            unsubscribe = str(parsed["List-Unsubscribe"])
            assert re.search(r"<https://smtp\.e2e\.example\.test/u/unsubscribe/[^>]+>", unsubscribe), unsubscribe
            assert f"<mailto:unsubscribe@{SENDER_DOMAIN}" in unsubscribe, unsubscribe
            assert str(parsed["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
            assert len(parsed.get_all("Feedback-ID") or []) == 1
            covered = signed_headers(m.content)
            assert covered and all({"list-unsubscribe", "list-unsubscribe-post"} <= h for h in covered), covered
            for idx in range(len(covered)):
                assert dkim.DKIM(m.content).verify(idx=idx, dnsfunc=lambda name, timeout=5: records.get(name)), \
                    f"signature {idx} of the message to {rcpt} does not verify"

        counters = done["status"]["counters"]
        assert (counters["total"], counters["sent"], counters["delivered"]) == (COUNT, len(messages), len(messages))
        assert (counters["deferred"], counters["bounced"], counters["failed"], counters["invalid"]) == (0, 0, 0, 0)
        assert done["status"]["progress"] == "100%"
    finally:
        cp.kubectl("-n", TENANT_NS, "delete", "campaign", CAMPAIGN, "--wait=false", check=False)
        cp.kubectl("-n", NS, "delete", "smtpserver", SERVER, "--wait=false", check=False)


def test_one_click_unsubscribe_makes_the_next_campaign_skip_the_address(platform: Any, knot: Any, sink_factory: Any,
                                                                        pod_runner: Any, tmp_path: Path) -> None:
    cp = platform
    sink = sink_factory(addr=SINK_ADDR)
    start_server(cp, knot, sink.port, tmp_path, UNSUB_SERVER)
    try:
        first = send_campaign(cp, "unsub-first", 3, UNSUB_SERVER)
        assert first["status"]["phase"] == "Completed", first["status"]
        messages = sink.messages()
        target = next(m for m in messages if m.rcpts == [f"r00001@{RCPT_DOMAIN}"])
        parsed = email.message_from_bytes(target.content, policy=email.policy.default)
        link = re.search(r"<(https://[^>]+)>", str(parsed["List-Unsubscribe"]))
        assert link, parsed["List-Unsubscribe"]
        # The link's host is the public name; here the MTA pod's HTTP listener serves it.
        path = urllib.parse.urlsplit(link.group(1)).path
        assert "/unsubscribe/" in path
        token_path = path[path.index("/unsubscribe/"):]
        ip = pods(cp, UNSUB_SERVER)[f"{UNSUB_SERVER}-0"]
        request = urllib.request.Request(f"http://{ip}:8080{token_path}", data=b"List-Unsubscribe=One-Click",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"},
                                         method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
        second = send_campaign(cp, "unsub-second", 3, UNSUB_SERVER)
        assert second["status"]["phase"] == "Completed", second["status"]
        counters = second["status"]["counters"]
        assert (counters["total"], counters["suppressed"], counters["delivered"]) == (3, 1, 2), counters
        received = collections.Counter(r for m in sink.messages() for r in m.rcpts)
        assert received[f"r00001@{RCPT_DOMAIN}"] == 1  # the first campaign's message only
        assert received[f"r00000@{RCPT_DOMAIN}"] == 2 and received[f"r00002@{RCPT_DOMAIN}"] == 2
    finally:
        for name in ("unsub-first", "unsub-second"):
            cp.kubectl("-n", TENANT_NS, "delete", "campaign", name, "--wait=false", check=False)
        cp.kubectl("-n", NS, "delete", "smtpserver", UNSUB_SERVER, "--wait=false", check=False)


def test_erasure_reaches_the_sqlite_ledger_and_a_later_campaign_suppresses_the_address(
        platform: Any, knot: Any, sink_factory: Any, pod_runner: Any, tmp_path: Path) -> None:
    """`smtp-infra tenant erase`: the MTA pod at once, then the operator's ledger-erasure Job on the finished
    campaign's claim; afterwards the address's bytes are nowhere in that SQLite ledger, the Job is gone, and the
    next campaign to the same list counts it as suppressed and does not mail it."""
    cp = platform
    sink = sink_factory(addr=SINK_ADDR)
    server, first, second = "cerase", "erase-first", "erase-second"
    start_server(cp, knot, sink.port, tmp_path, server)
    target = f"r00002@{RCPT_DOMAIN}"
    try:
        done = send_campaign(cp, first, 4, server)
        assert done["status"]["phase"] == "Completed", done["status"]
        ledger = Path(pod_runner.claim_dir(TENANT_NS, build.resource_name(first)))
        uid = done["metadata"]["uid"]

        def ledger_entry(address: str) -> Any:
            store = open_ledger(f"sqlite:///{ledger / 'ledger.db'}")
            try:
                return store.entry(uid, address)
            finally:
                store.close()

        assert ledger_entry(target) is not None
        # the ledger keys its rows by digest: the address itself is not in its files even before erasure
        assert [f.name for f in ledger.glob("ledger.db*") if target.encode() in f.read_bytes()] == []

        erased = subprocess.run([sys.executable, "-m", "smtpinfra_cli", "tenant", "erase", TENANT, target,
                                 "--kubeconfig", str(cp.kubeconfig), "--wait", "120"],
                                capture_output=True, text=True, timeout=180, check=False)
        assert erased.returncode == 0, erased.stdout + erased.stderr
        assert f"erased on {NS}/{server}-0" in erased.stdout
        assert "campaign ledgers: erased " in erased.stdout, erased.stdout
        assert ledger_entry(target) is None
        assert ledger_entry(f"r00001@{RCPT_DOMAIN}") is not None  # only that address went
        wait_for(lambda: not cp.kubectl("-n", TENANT_NS, "get", "jobs", "-l",
                                        f"app.kubernetes.io/component={build.ERASURE_COMPONENT}",
                                        "-o", "name").stdout.split(), timeout=30, what="the erasure Jobs deleted")
        assert target not in json.dumps(find(cp, "campaign", first, TENANT_NS))

        later = send_campaign(cp, second, 4, server)
        assert later["status"]["phase"] == "Completed", later["status"]
        counters = later["status"]["counters"]
        assert (counters["total"], counters["suppressed"], counters["delivered"]) == (4, 1, 3), counters
        received = collections.Counter(r for m in sink.messages() for r in m.rcpts)
        assert received[target] == 1 and received[f"r00000@{RCPT_DOMAIN}"] == 2
    finally:
        for name in (first, second):
            cp.kubectl("-n", TENANT_NS, "delete", "campaign", name, "--wait=false", check=False)
        cp.kubectl("-n", NS, "delete", "smtpserver", server, "--wait=false", check=False)
