"""End to end: a warming address sends at most its day's cap, and its day advances only on a good, full day.

Real parts: the operator and the MTA pod (run by the local pod runner) both read one test clock (a
file: the runner passes SMTP_INFRA_FAKE_TIME_FILE to its pods as it is in the test's environment),
the MTA relays by MX (Knot) to smtp-sink, and the operator judges each finished day from the
figures it collects from the pod. Day 1's cap is 4: of 6 messages the sink gets 4 that day, the
other 2 wait (nothing bounces). The next morning day 1 is judged (4 of 4 sent, no bounce): the
address is on day 2, cap 8, and the 2 waiting messages leave. Day 2 uses its cap but two recipients
complain (ARF reports through the MTA's inbound listener): judged, with the idle day 3, two days later
(as after an operator outage), the address is Held on day 2.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.common import NS, RCPT_DOMAIN, SENDER_DOMAIN, SINK_ADDR
from tests.e2e.test_dnsbl import TestClock, address
from tests.e2e.test_quarantine_mail import reloads
from tests.e2e.test_smtpserver import pods, server_manifest, swaks, tenant_password
from tests.e2e.test_tenant_suspension import complain
from tests.kube import OPERATOR_NAMESPACE, OperatorProcess, apply, get, running_operator, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.operator]

POOL, PLAN, SERVER = "warm-pool", "e2e-warmup", "wsend"
ADDRESS = "127.0.20.5"
T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
CAPS = {1: 4, 2: 8, 3: 12}


def module_clock(tmp_path_factory: pytest.TempPathFactory, start: datetime) -> Iterator[TestClock]:
    """A module's time from ``start``, for the operator and (through the pod runner) the MTA pods started
    meanwhile: the runner passes SMTP_INFRA_FAKE_TIME_FILE on as it is in the test's environment."""
    test_clock = TestClock(tmp_path_factory.mktemp("clock") / "now")
    test_clock.set(start)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMTP_INFRA_FAKE_TIME_FILE", str(test_clock.path))
        yield test_clock


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClock]:
    yield from module_clock(tmp_path_factory, T0)


@pytest.fixture(scope="module")
def operator(crds: Any, clock: TestClock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The module's operator (the platform fixture's): the chart's RBAC, on the module's test clock."""
    env = {"SMTP_INFRA_FAKE_TIME_FILE": str(clock.path), "SMTP_INFRA_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE}
    with running_operator(crds, tmp_path_factory.mktemp("operator"), env) as proc:
        yield proc


def day_figures(cp: Any, ip: str, day: str) -> dict[str, int]:
    """The address's figures for `day` as the pod's delivering process reports them (/stats on 8081)."""
    token = base64.b64decode(get(cp, "secret", f"{SERVER}-stats-token", NS)["data"]["token"]).decode()
    request = urllib.request.Request(f"http://{ip}:8081/stats", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        days = json.load(answer).get("addresses", {}).get(ADDRESS, {}).get("days", {})
    return dict(days.get(day, {}).get("other", {}))


def test_caps_hold_mail_back_and_only_a_good_full_day_advances(platform: Any, knot: Any, clock: TestClock,
                                                                sink_factory: Any, pod_runner: Any) -> None:
    cp = platform
    sink = sink_factory(addr=SINK_ADDR)
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "WarmupPlan", "metadata": {"name": PLAN},
               "spec": {"stages": [{"day": d, "dailyCap": c} for d, c in CAPS.items()],
                        "healthGates": {"minVolume": 1, "maxComplaintRate": "5"}, "onGateFailure": "Hold"}})
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": POOL},
               "spec": {"addresses": [ADDRESS], "ptrTemplate": "mta-w{index}.e2e.example.test",
                        "warmupPlan": PLAN}})
    apply(cp, server_manifest(SERVER, knot, sink.port, replicas=1, pools=[POOL]))
    try:
        wait_for(lambda: cp.kubectl("-n", NS, "wait", "--for=condition=Ready", f"smtpserver/{SERVER}",
                                    "--timeout=60s", check=False).returncode == 0,
                 timeout=240, interval=1, what="the SmtpServer Ready")
        [ip] = pods(cp, SERVER).values()
        password = tenant_password(cp)

        def pool_address() -> dict[str, Any]:
            return address(get(cp, "ippool", POOL), ADDRESS)

        def received() -> list[Any]:
            return [m for m in sink.messages() if m.rcpts[0].startswith("w")]

        first = pool_address()
        assert (first.get("warmupDay"), first.get("dailyCap"), first.get("state")) == (1, CAPS[1], "Warming")

        for i in range(6):
            result = swaks(f"{ip}:587", password, to=f"w{i}@{RCPT_DOMAIN}")
            assert result.returncode == 0, result.stdout[-2000:]
        wait_for(lambda: len(received()) >= CAPS[1], timeout=60, what="day 1's cap at the sink")
        wait_for(lambda: pool_address().get("sentToday") == CAPS[1], timeout=60,
                 what="the day's figures collected from the pod")
        assert len(received()) == CAPS[1]  # the cap is reached: the other two wait
        assert {m.client_addr for m in received()} == {ADDRESS}

        clock.advance(timedelta(days=1))  # day 1 finished: judged (4 of 4 sent, nothing bounced)
        second = wait_for(lambda: (a := pool_address()).get("warmupDay") == 2 and a, timeout=90,
                          what="the address on day 2")
        assert second["dailyCap"] == CAPS[2] and second["lastGate"]["verdict"] == "Advanced", second
        wait_for(lambda: len(received()) == 6, timeout=90, what="the two held messages delivered on day 2")
        assert all("mailer-daemon" not in m.mail_from.lower() for m in sink.messages())  # nothing bounced

        # Day 2's cap used in full, and two recipients complain (ARF to the inbound listener): 25 %.
        for i in range(6, 12):
            result = swaks(f"{ip}:587", password, to=f"w{i}@{RCPT_DOMAIN}")
            assert result.returncode == 0, result.stdout[-2000:]
        wait_for(lambda: len(received()) == 12, timeout=90, what="day 2's cap at the sink")
        return_paths = {m.rcpts[0]: m.mail_from for m in received()}
        for rcpt in (f"w6@{RCPT_DOMAIN}", f"w7@{RCPT_DOMAIN}"):
            complain(ip, return_paths[rcpt], rcpt, f"news@{SENDER_DOMAIN}")
        wait_for(lambda: day_figures(cp, ip, "2026-05-05").get("complained") == 2, timeout=60,
                 what="the complaints counted against the address")

        # Two days at once, as after an operator outage: day 2 is judged on figures read after it ended.
        clock.advance(timedelta(days=2))  # day 2: full, but over the complaint gate; day 3: idle
        judged = wait_for(lambda: (a := pool_address()).get("evaluatedThrough") == "2026-05-06" and a,
                          timeout=90, what="days 2 and 3 judged")
        assert judged["warmupDay"] == 2 and judged["dailyCap"] == CAPS[2], judged
        verdicts = [(v["date"], v["verdict"]) for v in judged.get("gateHistory") or []]
        assert verdicts[-2:] == [("2026-05-05", "Held"), ("2026-05-06", "Idle")], verdicts
        held = judged["gateHistory"][-2]
        assert (held["dayBefore"], held["dayAfter"]) == (2, 2) and "complaint rate" in held["reason"], held
        assert len(received()) == 12

        def held_events() -> list[str]:
            found = json.loads(cp.kubectl("-n", "default", "get", "events", "--field-selector",
                                          f"involvedObject.name={POOL},reason=WarmupHeld", "-o", "json").stdout)
            return [e["message"] for e in found["items"]]

        [event] = wait_for(held_events, timeout=60, what="the WarmupHeld Event")
        assert "warm-up held on day 2 after 2026-05-05" in event, event
    finally:
        cp.kubectl("-n", NS, "delete", "smtpserver", SERVER, "--wait=false", check=False)
        cp.kubectl("delete", "ippool", POOL, "--wait=false", check=False)
        cp.kubectl("delete", "warmupplan", PLAN, "--wait=false", check=False)


OVERFLOW_POOL, QUICK_PLAN, OVERFLOW_SERVER = "overflow-pool", "e2e-quick", "osend"
WARM, NEW = "127.0.20.7", "127.0.20.8"


def delivery_metric(ip: str, name: str, labels: dict[str, str]) -> float:
    """Sum of a metric's samples on the pod's delivering process (/metrics on 8081) that match ``labels``."""
    with urllib.request.urlopen(f"http://{ip}:8081/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_mail_moves_between_replicas_to_the_warm_address_only_when_the_pool_says_so(
        platform: Any, knot: Any, clock: TestClock, sink_factory: Any, pod_runner: Any) -> None:
    """Each replica owns one address of the pool: replica 0 the warm one, replica 1 a new, warming one (cap 2).
    With overflow WarmAddresses, replica 1 hands what is over its cap to replica 0 (pod to pod, by the pod's DNS
    name); with Wait it keeps it; once its address is paused, the pool's quarantine.queuedMail Move sends its
    queue to replica 0 too. Nothing bounces, nothing is sent twice."""
    cp = platform
    sink = sink_factory(addr=SINK_ADDR)
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "WarmupPlan", "metadata": {"name": QUICK_PLAN},
               "spec": {"stages": [{"day": 1, "dailyCap": 2}], "healthGates": {"minVolume": 1}}})
    pool = {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": OVERFLOW_POOL},
            "spec": {"addresses": [WARM], "ptrTemplate": "mta-o{index}.e2e.example.test", "warmupPlan": QUICK_PLAN,
                     "overflow": "WarmAddresses"}}
    apply(cp, pool)
    apply(cp, server_manifest(OVERFLOW_SERVER, knot, sink.port, replicas=1, pools=[OVERFLOW_POOL]))
    try:
        def ready() -> None:
            wait_for(lambda: cp.kubectl("-n", NS, "wait", "--for=condition=Ready", f"smtpserver/{OVERFLOW_SERVER}",
                                        "--timeout=60s", check=False).returncode == 0,
                     timeout=240, interval=1, what="the SmtpServer Ready")

        ready()
        password = tenant_password(cp)

        def by_source() -> Counter[str]:
            return Counter(m.client_addr for m in sink.messages() if m.rcpts[0].startswith("o"))

        def send(ip: str, first: int, count: int) -> None:
            for i in range(first, first + count):
                result = swaks(f"{ip}:587", password, to=f"o{i}@{RCPT_DOMAIN}")
                assert result.returncode == 0, result.stdout[-2000:]

        # The first address warms up in one full day (its plan has one stage).
        [ip0] = pods(cp, OVERFLOW_SERVER).values()
        send(ip0, 0, 2)
        wait_for(lambda: by_source() == {WARM: 2}, timeout=60, what="day 1 of the first address")
        wait_for(lambda: address(get(cp, "ippool", OVERFLOW_POOL), WARM).get("sentToday") == 2, timeout=60,
                 what="the day's figures collected from the pod")
        clock.advance(timedelta(days=1))
        wait_for(lambda: address(get(cp, "ippool", OVERFLOW_POOL), WARM).get("state") == "Warm", timeout=90,
                 what="the first address warm")

        # A new address and a second replica for it: warming, cap 2; what is over its cap moves to replica 0.
        pool["spec"]["addresses"] = [WARM, NEW]
        apply(cp, pool)
        apply(cp, server_manifest(OVERFLOW_SERVER, knot, sink.port, replicas=2, pools=[OVERFLOW_POOL]))
        wait_for(lambda: len(pods(cp, OVERFLOW_SERVER)) == 2, timeout=60, what="the second replica")
        ready()
        ip1 = pods(cp, OVERFLOW_SERVER)[f"{OVERFLOW_SERVER}-1"]
        wait_for(lambda: delivery_metric(ip1, "smtpinfra_mta_warmup_cap_messages",
                                         {"source_ip": NEW, "window": "day"}) == 2,
                 timeout=90, what="the new address warming on replica 1, cap 2")
        send(ip1, 2, 5)
        wait_for(lambda: sum(by_source().values()) == 7, timeout=60, what="the five messages at the sink")
        assert by_source() == {WARM: 2 + 3, NEW: 2}  # the warming address first, up to its cap
        assert delivery_metric(ip1, "smtpinfra_mta_handed_over_total", {"direction": "sent"}) == 3
        assert delivery_metric(ip0, "smtpinfra_mta_handed_over_total", {"direction": "received"}) == 3

        # The pool says Wait: what is over the warming address's cap stays on replica 1.
        [pod1] = [name for name in pods(cp, OVERFLOW_SERVER) if name.endswith("-1")]
        reloaded = reloads(pod_runner, pod1)
        pool["spec"]["overflow"] = "Wait"
        apply(cp, pool)
        wait_for(lambda: reloads(pod_runner, pod1) >= reloaded + 2, timeout=90, what="replica 1 reloaded the pool")
        waits = delivery_metric(ip1, "smtpinfra_mta_throttle_waits_total", {"reason": "warmup_or_suspend"})
        send(ip1, 7, 3)
        wait_for(lambda: delivery_metric(ip1, "smtpinfra_mta_throttle_waits_total",
                                         {"reason": "warmup_or_suspend"}) >= waits + 2,
                 timeout=60, what="the three messages held by the cap")
        assert sum(by_source().values()) == 7

        # The new address is paused: its replica's queue moves to the warm address (queuedMail: Move).
        pool["spec"]["paused"] = [NEW]
        apply(cp, pool)
        wait_for(lambda: sum(by_source().values()) == 10, timeout=90, what="the held messages moved and delivered")
        assert by_source() == {WARM: 5 + 3, NEW: 2}
        assert sorted(r for m in sink.messages() for r in m.rcpts if r.startswith("o")) == sorted(
            f"o{i}@{RCPT_DOMAIN}" for i in range(10))  # each once
        assert all("mailer-daemon" not in m.mail_from.lower() for m in sink.messages())
    finally:
        cp.kubectl("-n", NS, "delete", "smtpserver", OVERFLOW_SERVER, "--wait=false", check=False)
        cp.kubectl("delete", "ippool", OVERFLOW_POOL, "--wait=false", check=False)
        cp.kubectl("delete", "warmupplan", QUICK_PLAN, "--wait=false", check=False)
