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
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.e2e.common import NS, RCPT_DOMAIN, SENDER_DOMAIN, SINK_ADDR
from tests.e2e.test_dnsbl import TestClock, address
from tests.e2e.test_smtpserver import pods, server_manifest, swaks, tenant_password
from tests.e2e.test_tenant_suspension import complain
from tests.kube import OPERATOR_NAMESPACE, OperatorProcess, apply, get, running_operator, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.operator]

POOL, PLAN, SERVER = "warm-pool", "e2e-warmup", "wsend"
ADDRESS = "127.0.20.5"
T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
CAPS = {1: 4, 2: 8, 3: 12}


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClock]:
    """The module's time, for the operator and (through the pod runner) the MTA pods started meanwhile."""
    test_clock = TestClock(tmp_path_factory.mktemp("warmup-clock") / "now")
    test_clock.set(T0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMTP_INFRA_FAKE_TIME_FILE", str(test_clock.path))
        yield test_clock


@pytest.fixture(scope="module")
def operator(crds: Any, clock: TestClock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """This module's operator (the platform fixture's): the chart's RBAC, on the test clock."""
    env = {"SMTP_INFRA_FAKE_TIME_FILE": str(clock.path), "SMTP_INFRA_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE}
    with running_operator(crds, tmp_path_factory.mktemp("warmup-operator"), env) as proc:
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
