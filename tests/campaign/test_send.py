"""The sender end to end against a real MTA, smtp-sink and the local control plane.

Exactly once per recipient (counted at the sink), across SIGKILLs and with two senders at once;
the progress on the Lease; bad input stops the campaign with exit 2 and nothing sent.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import functools
import random
import uuid
from pathlib import Path

import pytest

from smtpinfra_campaign.ledger import Claim, State, open_ledger
from smtpinfra_campaign.message import CampaignIdentity, Compliance, build_message
from smtpinfra_campaign.submission import Outcome, Result, SmtpSettings, Submitter, TlsMode
from smtpinfra_mta import campaign_contract as contract
from tests.kube import wait_for
from tests.mta.conftest import MTA_ADDR, PASSWORDS, base_config

from .world import (
    NAMESPACE,
    UNSUBSCRIBE_KEY,
    SenderRun,
    create_campaign,
    csv_list,
    delivered_by_recipient,
    ensure_tenant,
    lease,
    ledger_counts,
    progress,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def world(crds, tmp_path, tls_files, password_hashes, dns_server, sink_factory, mta_factory):
    ensure_tenant(crds)
    sink = sink_factory()
    mta = mta_factory(base_config(tmp_path, tls_files, password_hashes, dns=dns_server, sink_port=sink.port))
    runs: list[SenderRun] = []

    def sender(name: str, ledger_url: str | None = None, **kw) -> SenderRun:
        run = SenderRun(crds, mta, name, ledger_url or f"sqlite:///{tmp_path}/{name}.db", tmp_path, **kw)
        runs.append(run)
        return run

    yield crds, mta, sink, sender
    for run in runs:
        run.stop()


def _name() -> str:
    return f"c-{uuid.uuid4().hex[:8]}"


def test_every_recipient_exactly_once_with_compliance_headers(world):
    cp, mta, sink, sender = world
    name = _name()
    n = 40
    uid = create_campaign(cp, name, csv_list(n, prefix="once"))
    run = sender(name)
    run.start()
    assert run.wait() == 0, run.log()
    counts = delivered_by_recipient(sink, mta, n)
    assert counts == {f"once{i}@example.test": 1 for i in range(n)}
    done = progress(cp, name)
    assert done["done"] is True and done["error"] is None
    assert (done["total"], done["submitted"], done["invalid"], done["failed"]) == (n + 2, n, 2, 0)
    assert {r["row"] for r in done["invalidRows"]} == {6, 9}
    assert lease(cp, name)["spec"].get("holderIdentity") is None  # released
    msg = next(m for m in sink.messages() if m.rcpts == ["once7@example.test"])
    parsed = email.message_from_bytes(msg.content, policy=email.policy.default)
    assert parsed["Subject"] == "News for User 7"
    assert parsed["Message-ID"] == contract.message_id(uid, "once7@example.test", "alpha.test")
    assert parsed["X-Idempotency-Key"] == contract.idempotency_key(uid, "once7@example.test")
    assert parsed["Feedback-ID"] == f"{name}:alpha:{NAMESPACE}:smtpinfra"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "<mailto:unsubscribe@alpha.test?subject=unsubscribe%20" in parsed["List-Unsubscribe"]
    assert "<https://mta.alpha.test/unsubscribe/" in parsed["List-Unsubscribe"]
    text = parsed.get_body(("plain",)).get_content()
    assert "your code is 00007" in text and "Alpha Ltd, 1 Test Street" in text
    assert "Alpha Ltd, 1 Test Street" in parsed.get_body(("html",)).get_content()


def _submitted_at_least(url: str, uid: str, target: int) -> bool:
    return ledger_counts(url, uid)[State.SUBMITTED] >= target


def test_sigkill_three_times_then_restart_still_exactly_once(world):
    cp, mta, sink, sender = world
    name = _name()
    n = 300
    uid = create_campaign(cp, name, csv_list(n, prefix="kill", bad_rows=False))
    run = sender(name)
    rng = random.Random()
    for _ in range(3):
        run.start()
        before = ledger_counts(run.ledger_url, uid)[State.SUBMITTED] if Path(run.ledger_url[10:]).exists() else 0
        target = min(n - 1, before + rng.randint(5, 60))
        wait_for(functools.partial(_submitted_at_least, run.ledger_url, uid, target), timeout=120,
                 what=f"{target} submitted")
        run.kill()
    run.start()
    assert run.wait() == 0, run.log()
    counts = delivered_by_recipient(sink, mta, n)
    assert counts == {f"kill{i}@example.test": 1 for i in range(n)}
    assert progress(cp, name)["submitted"] == n
    assert run.runs == 4


def test_a_recipient_left_submitting_is_resent_and_the_mta_does_not_deliver_it_twice(world, tmp_path):
    """The window the ledger cannot see: the MTA answered 250, the sender died before writing it down."""
    cp, mta, sink, sender = world
    name = _name()
    uid = create_campaign(cp, name, csv_list(3, prefix="window", bad_rows=False))
    run = sender(name)
    # what the first sender did before it was killed: 'submitting' committed, message accepted (250)
    campaign = CampaignIdentity(name, NAMESPACE, uid, "alpha")
    compliance = Compliance("news@alpha.test", "Alpha News", "support@alpha.test",
                            "Alpha Ltd, 1 Test Street, Testville", "https://mta.alpha.test/",
                            "unsubscribe@alpha.test", UNSUBSCRIBE_KEY)
    address = "window1@example.test"
    ledger = open_ledger(run.ledger_url)
    ledger.claim(uid, [Claim(address, 3, contract.message_id(uid, address, "alpha.test"),
                             contract.idempotency_key(uid, address))])
    ledger.mark(uid, address, State.SUBMITTING)
    ledger.close()
    data = build_message(campaign, compliance, address, "News for User 1", "Hello", None).as_bytes()
    submitter = Submitter(SmtpSettings(MTA_ADDR, mta.submission_port, "alice", PASSWORDS["alice"],
                                       TlsMode.STARTTLS, verify=False))
    async def first_attempt() -> Result:
        try:
            return await submitter.submit("news@alpha.test", address, data)
        finally:
            await submitter.close()

    assert asyncio.run(first_attempt()).outcome is Outcome.ACCEPTED
    run.start()
    assert run.wait() == 0, run.log()
    counts = delivered_by_recipient(sink, mta, 3)
    assert counts == {"window0@example.test": 1, "window1@example.test": 1, "window2@example.test": 1}
    entry = open_ledger(run.ledger_url).entry(uid, address)
    assert entry.state is State.SUBMITTED and entry.attempts == 2


def test_two_senders_one_waits_on_the_lease(world):
    cp, mta, sink, sender = world
    name = _name()
    n = 40
    # suspended at first, so the first sender holds the Lease for as long as the second takes to start
    create_campaign(cp, name, csv_list(n, prefix="two", bad_rows=False), suspend=True)
    first = sender(name, connections=2)
    first.start()
    wait_for(lambda: (lease(cp, name) or {}).get("spec", {}).get("holderIdentity") == first.identity, timeout=120,
             what="the first sender holding the lease")
    second = sender(name, ledger_url=first.ledger_url, connections=2)
    second.start()
    wait_for(lambda: "held by " + first.identity in second.log(), timeout=120, what="the second sender waiting")
    assert second.process.poll() is None
    cp.kubectl("patch", "campaign", name, "-n", NAMESPACE, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    assert first.wait() == 0, first.log()
    assert second.wait() == 0, second.log()
    counts = delivered_by_recipient(sink, mta, n)
    assert counts == {f"two{i}@example.test": 1 for i in range(n)}
    assert progress(cp, name)["done"] is True
    assert "holding lease" in second.log()  # it took over once the first released it, and found nothing to send


def test_suspend_pauses_and_resume_continues_then_deletion_stops(world):
    cp, mta, sink, sender = world
    name = _name()
    create_campaign(cp, name, csv_list(5, prefix="pause", bad_rows=False), suspend=True)
    run = sender(name)
    run.start()
    # suspended from the start: the sender holds the lease and publishes progress, but sends nothing
    wait_for(lambda: (progress(cp, name) or {}).get("total") == 5, timeout=60, what="progress while suspended")
    assert progress(cp, name)["submitted"] == 0
    assert run.process.poll() is None
    cp.kubectl("patch", "campaign", name, "-n", NAMESPACE, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    assert run.wait(120) == 0, run.log()
    assert delivered_by_recipient(sink, mta, 5) == {f"pause{i}@example.test": 1 for i in range(5)}
    # a suspended campaign that is deleted: the sender stops
    other = _name()
    create_campaign(cp, other, csv_list(5, prefix="gone", bad_rows=False), suspend=True)
    run2 = sender(other)
    run2.start()
    wait_for(lambda: progress(cp, other) is not None, timeout=60, what="the second sender's progress")
    cp.kubectl("delete", "campaign", other, "-n", NAMESPACE)
    assert run2.wait(120) == 0, run2.log()
    assert "campaign deleted" in run2.log()


@pytest.mark.parametrize(("changes", "expected"), [
    ({"templates": {"text": "Hello {{ nickname }}"}}, "'nickname' is undefined"),
    ({"templates": {"text": "Hello {{ first_name"}}, "spec.templates.text"),
    ({"sender": {"address": "news@evil.test"}}, "not one of the tenant's sender domains"),
])
def test_bad_input_stops_with_exit_2_and_nothing_sent(world, changes, expected):
    cp, mta, sink, sender = world
    name = _name()
    create_campaign(cp, name, csv_list(3, prefix="bad", bad_rows=False), **changes)
    run = sender(name)
    run.start()
    assert run.wait(120) == 2, run.log()
    assert expected in progress(cp, name)["error"]
    assert progress(cp, name)["submitted"] == 0
    assert mta.call(lambda: mta.app.spool.queued_ids()) == []
    assert sink.messages() == []


@pytest.mark.parametrize("mode", [TlsMode.STARTTLS, TlsMode.IMPLICIT], ids=["starttls", "implicit"])
def test_certificate_is_verified_for_the_servers_name_not_the_address_dialled(
        mode, tmp_path, tls_files, password_hashes, dns_server, sink_factory, mta_factory):
    """The Job dials the submission Service; the certificate names the server (mta.test here): with
    SMTP_TLS_SERVER_NAME the session verifies against that name and submits, without it the same
    certificate is refused for the address dialled and nothing is accepted."""
    sink = sink_factory()
    mta = mta_factory(base_config(tmp_path, tls_files, password_hashes, dns=dns_server, sink_port=sink.port))
    port = mta.submission_port if mode is TlsMode.STARTTLS else mta.smtps_port
    cert, _ = tls_files
    data = b"From: news@alpha.test\r\nTo: tls@example.test\r\nSubject: tls\r\n\r\nhello\r\n"

    async def attempt(tls_name: str | None) -> Result:
        submitter = Submitter(SmtpSettings(MTA_ADDR, port, "alice", PASSWORDS["alice"], mode, verify=True,
                                           ca_file=str(cert), timeout=10, tls_name=tls_name))
        try:
            return await submitter.submit("news@alpha.test", "tls@example.test", data)
        finally:
            await submitter.close()

    refused = asyncio.run(attempt(None))
    assert refused.outcome is Outcome.RETRY and "CERTIFICATE_VERIFY_FAILED" in refused.reply, refused
    assert asyncio.run(attempt("mta.test")).outcome is Outcome.ACCEPTED
    [message] = sink.wait_messages(1, timeout=30)
    assert message.rcpts == ["tls@example.test"]
