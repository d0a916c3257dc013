"""End to end: a whole warm-up, 30 days on the injected clock, with per-provider caps and real feedback.

Real parts: the operator and the MTA pod read one test clock; the MTA resolves each recipient domain's MX
through Knot, which also serves the mailbox providers' own zones (``gmail.rcpt…`` has Google's MX host
name, ``yahoo.rcpt…`` Yahoo's), so the provider a message counts against comes from real MX names;
smtp-sink receives by source address. Every sending day the test tops the queue up to one message
more than the gmail cap and one more than the day's cap, so the caps (not the supply) decide what leaves:
the sink gets exactly the day's cap, never more to gmail or yahoo than theirs. Bounces and complaints
come back as real DSNs and ARF reports through the pod's inbound listener. Over the month: an idle day
does not advance, a day with one bounce under the gate advances, a day over the bounce gate and one over
the complaint gate each step back a day, and the address ends the plan Warm, sending without a cap.
"""

from __future__ import annotations

import base64
import json
import smtplib
import ssl
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.dns.knot import FORWARD_ZONE, KnotServer
from tests.e2e.common import NS, RCPT_DOMAIN, SENDER_DOMAIN, SINK_ADDR
from tests.e2e.test_dnsbl import TestClock, address
from tests.e2e.test_smtpserver import pods, server_manifest, tenant_password
from tests.e2e.test_tenant_suspension import complain
from tests.e2e.test_verp import _bounce
from tests.e2e.test_warmup_mail import module_clock, operator  # noqa: F401  (the module operator on its clock)
from tests.kube import apply, get, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.operator, pytest.mark.dns]

POOL, PLAN, SERVER = "month-pool", "e2e-month", "msend"
ADDRESS = "127.0.20.6"
T0 = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
GMAIL, YAHOO = f"gmail.{RCPT_DOMAIN}", f"yahoo.{RCPT_DOMAIN}"
DOMAINS = {"gmail": GMAIL, "yahoo": YAHOO, "other": RCPT_DOMAIN}
# (first plan day, daily cap, gmail cap, yahoo cap)
STAGES = ((1, 6, 2, 2), (6, 9, 3, 3), (11, 12, 4, 4), (16, 15, 5, 5), (21, 18, 6, 6), (25, 21, 7, 7))
PLAN_DAYS = STAGES[-1][0]
IDLE, BOUNCES_UNDER, BOUNCES_OVER, COMPLAINTS_OVER = 3, 12, 8, 18
"""Calendar days (0 = T0) with something to show: nothing sent; one DSN (under the 12 % gate); two DSNs
and two ARF complaints (over the 12 % and 10 % gates): each of the last two steps back one day."""
CALENDAR_DAYS = 30


@dataclass(frozen=True)
class DayCaps:
    daily: int
    gmail: int
    yahoo: int


def caps_of(day: int) -> DayCaps | None:
    """The plan's caps on warm-up ``day``; None past the plan (warm)."""
    if day > PLAN_DAYS:
        return None
    _, daily, gmail, yahoo = [s for s in STAGES if s[0] <= day][-1]
    return DayCaps(daily, gmail, yahoo)


@pytest.fixture(scope="module")
def knot() -> Iterator[KnotServer]:
    """The e2e Knot, also serving Google's and Yahoo's zones with their MX host names pointing at the sink."""
    with tempfile.TemporaryDirectory() as d:
        server = KnotServer(Path(d), extra_zones=("google.com", "yahoodns.net"))
        server.start()
        server.foreign_update(FORWARD_ZONE, add=[(RCPT_DOMAIN, 60, "MX", f"10 sink.{FORWARD_ZONE}."),
                                                 (f"sink.{FORWARD_ZONE}", 60, "A", SINK_ADDR),
                                                 (GMAIL, 60, "MX", "5 gmail-smtp-in.l.google.com."),
                                                 (YAHOO, 60, "MX", "1 mta5.am0.yahoodns.net.")])
        server.foreign_update("google.com", add=[("gmail-smtp-in.l.google.com", 60, "A", SINK_ADDR)])
        server.foreign_update("yahoodns.net", add=[("mta5.am0.yahoodns.net", 60, "A", SINK_ADDR)])
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClock]:
    yield from module_clock(tmp_path_factory, T0)


def provider_of(rcpt: str) -> str:
    domain = rcpt.rsplit("@", 1)[1]
    return next(p for p, d in DOMAINS.items() if d == domain)


class Pod:
    """The MTA pod's delivery side as the operator sees it: /stats and /metrics on 8081."""

    def __init__(self, cp: Any, ip: str) -> None:
        self.ip = ip
        self.token = base64.b64decode(get(cp, "secret", f"{SERVER}-stats-token", NS)["data"]["token"]).decode()

    def day(self, day: str) -> dict[str, dict[str, int]]:
        """The address's figures on ``day`` per provider."""
        request = urllib.request.Request(f"http://{self.ip}:8081/stats",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            days = json.load(answer).get("addresses", {}).get(ADDRESS, {}).get("days", {})
        return {p: dict(f) for p, f in days.get(day, {}).items()}

    def counted(self, day: str, field: str, n: int) -> bool:
        """Whether the address's ``field`` figure on ``day`` (over the providers) is ``n``."""
        return sum(f.get(field, 0) for f in self.day(day).values()) == n

    def enforces(self, caps: DayCaps) -> bool:
        return self.caps_in_force() == {"all": caps.daily, "gmail": caps.gmail, "yahoo": caps.yahoo}

    def caps_in_force(self) -> dict[str, float]:
        """The address's daily caps the delivering process enforces now, by provider ("all": the address's)."""
        with urllib.request.urlopen(f"http://{self.ip}:8081/metrics", timeout=10) as answer:
            text = answer.read().decode()
        return {s.labels["provider"]: s.value for family in text_string_to_metric_families(text)
                for s in family.samples if s.name == "smtpinfra_mta_warmup_cap_messages"
                and s.labels["source_ip"] == ADDRESS and s.labels["window"] == "day"}


def at_least(count: Callable[[], Sized], n: int) -> bool:
    return len(count()) >= n


def judged_through(pool_address: Callable[[], dict[str, Any]], day: str) -> dict[str, Any] | None:
    """The address's status once the operator has judged ``day``."""
    status = pool_address()
    return status if status.get("evaluatedThrough") == day else None


def submit(ip: str, password: str, rcpts: list[str]) -> None:
    """Submit one message per recipient on port 587 (STARTTLS, AUTH), in one session."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(ip, 587, local_hostname="client.e2e.example.test", timeout=60) as s:
        s.starttls(context=context)
        s.login("e2e-acme", password)
        for rcpt in rcpts:
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = f"news@{SENDER_DOMAIN}", rcpt, "warming up"
            msg.set_content("Hello from the warm-up.")
            s.send_message(msg, from_addr=f"news@{SENDER_DOMAIN}", to_addrs=[rcpt])


def test_a_month_of_warm_up_follows_the_plan_caps_and_gates(platform: Any, knot: KnotServer, clock: TestClock,
                                                            sink_factory: Any, pod_runner: Any) -> None:
    cp = platform
    sink = sink_factory(addr=SINK_ADDR)
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "WarmupPlan", "metadata": {"name": PLAN},
               "spec": {"stages": [{"day": d, "dailyCap": c, "providerCaps": [{"provider": "gmail", "dailyCap": g},
                                                                               {"provider": "yahoo", "dailyCap": y}]}
                                   for d, c, g, y in STAGES],
                        "healthGates": {"minVolume": 1, "maxBounceRate": "12", "maxComplaintRate": "10",
                                        "minCapUsage": "90"},
                        "onGateFailure": "StepBack", "stepBackDays": 1}})
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": POOL},
               "spec": {"addresses": [ADDRESS], "ptrTemplate": "mta-m{index}.e2e.example.test", "warmupPlan": PLAN}})
    apply(cp, server_manifest(SERVER, knot, sink.port, replicas=1, pools=[POOL]))
    try:
        wait_for(lambda: cp.kubectl("-n", NS, "wait", "--for=condition=Ready", f"smtpserver/{SERVER}",
                                    "--timeout=60s", check=False).returncode == 0,
                 timeout=240, interval=1, what="the SmtpServer Ready")
        [ip] = pods(cp, SERVER).values()
        pod = Pod(cp, ip)
        password = tenant_password(cp)
        submitted: Counter[str] = Counter()
        seen: dict[str, str] = {}  # recipient -> the calendar day it reached the sink
        serial = 0

        def pool_address() -> dict[str, Any]:
            return address(get(cp, "ippool", POOL), ADDRESS)

        def arrived() -> dict[str, Any]:
            return {r: m for m in sink.messages() for r in m.rcpts}

        day = 1  # the warm-up day the test expects
        observed: list[tuple[str, str]] = []
        for index in range(CALENDAR_DAYS):
            today = (T0 + timedelta(days=index)).date().isoformat()
            caps = caps_of(day)
            assert caps is not None
            wait_for(partial(pod.enforces, caps), timeout=60, what=f"day {day}'s caps in force in the pod on {today}")
            if index != IDLE:
                # One more than the gmail cap and one more than the day's cap, except before the idle day
                # (it must start with nothing waiting).
                extra = 0 if index + 1 == IDLE else 1
                targets = {"gmail": caps.gmail + extra, "yahoo": caps.yahoo,
                           "other": caps.daily - caps.gmail - caps.yahoo + extra}
                waiting = submitted - Counter(provider_of(r) for r in seen)
                new: list[str] = []
                for provider, target in targets.items():
                    for _ in range(max(target - waiting[provider], 0)):
                        serial += 1
                        new.append(f"m{serial}@{DOMAINS[provider]}")
                        submitted[provider] += 1
                submit(ip, password, new)
                wait_for(partial(pod.counted, today, "sent", caps.daily), timeout=60,
                         what=f"day {day}'s cap {caps.daily} sent on {today}")
                wait_for(partial(at_least, arrived, len(seen) + caps.daily), timeout=60,
                         what=f"{today}'s messages at the sink")
            messages = arrived()
            todays = {r: m for r, m in messages.items() if r not in seen}
            seen.update(dict.fromkeys(todays, today))
            by_provider = Counter(provider_of(r) for r in todays)
            sent = 0 if index == IDLE else caps.daily
            assert len(todays) == sent, (today, by_provider)  # the day's cap, not one more
            assert by_provider["gmail"] <= caps.gmail and by_provider["yahoo"] <= caps.yahoo, (today, by_provider)
            assert {m.client_addr for m in todays.values()} <= {ADDRESS}
            figures = pod.day(today)  # the MTA counted each message against its provider from the MX names
            assert {p: f.get("sent", 0) for p, f in figures.items() if f.get("sent")} == {
                p: n for p, n in by_provider.items() if n}, (today, figures)

            feedback = {BOUNCES_UNDER: 1, BOUNCES_OVER: 2}.get(index, 0)
            for rcpt in sorted(todays)[:feedback]:
                _bounce(ip, todays[rcpt].mail_from, rcpt)
            if index == COMPLAINTS_OVER:
                for rcpt in sorted(todays)[:2]:
                    complain(ip, todays[rcpt].mail_from, rcpt, f"news@{SENDER_DOMAIN}")
            if feedback or index == COMPLAINTS_OVER:
                field = "complained" if index == COMPLAINTS_OVER else "bounced"
                count = 2 if index == COMPLAINTS_OVER else feedback
                wait_for(partial(pod.counted, today, field, count), timeout=60,
                         what=f"the {field} reports counted against {today}")

            # The day ends; the operator judges it from the figures it collects from the pod.
            if index == IDLE:
                expected, after = "Idle", day
            elif index in (BOUNCES_OVER, COMPLAINTS_OVER):
                expected, after = "SteppedBack", max(day - 1, 1)
            else:
                expected, after = "Advanced", day + 1
            clock.advance(timedelta(days=1))
            judged = wait_for(partial(judged_through, pool_address, today), timeout=90, what=f"{today} judged")
            assert (judged["lastGate"]["verdict"], judged["warmupDay"]) == (expected, after), (today, judged)
            if expected == "SteppedBack":
                gate = "complaint rate" if index == COMPLAINTS_OVER else "bounce rate"
                assert gate in judged["lastGate"]["reason"], judged["lastGate"]
            observed.append((today, expected))
            day = after
            if caps_of(day) is None:
                break

        assert index == CALENDAR_DAYS - 1 and day == PLAN_DAYS + 1, (index, day)
        warm = pool_address()
        assert warm["state"] == "Warm" and warm.get("dailyCap") is None, warm
        assert all("mailer-daemon" not in m.mail_from.lower() for m in sink.messages())  # nothing bounced here
        history = [(v["date"], v["verdict"]) for v in warm.get("gateHistory") or []]
        assert history and history == observed[-len(history):], history  # the status keeps the latest days

        # Warm: no cap any more; what waited leaves, and a day over the last cap goes out whole.
        wait_for(lambda: pod.caps_in_force() == {}, timeout=60, what="no cap in force for the warm address")
        burst = [f"warm{i}@{RCPT_DOMAIN}" for i in range(STAGES[-1][1] + 5)]
        submit(ip, password, burst)
        wait_for(lambda: len(arrived()) == sum(submitted.values()) + len(burst), timeout=90,
                 what="the warm address's whole day at the sink")
    finally:
        cp.kubectl("-n", NS, "delete", "smtpserver", SERVER, "--wait=false", check=False)
        cp.kubectl("delete", "ippool", POOL, "--wait=false", check=False)
        cp.kubectl("delete", "warmupplan", PLAN, "--wait=false", check=False)
