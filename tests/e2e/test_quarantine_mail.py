"""End to end: a blocklisted address stops sending mail, and starts again once released.

Real parts throughout: the operator (on a test clock, so `checkInterval` and `releaseAfter` pass in
seconds) checks the pool's one address in a blocklist zone served by Knot; an MTA pod run by the
local pod runner sends from that address to smtp-sink, its MX resolved through the e2e Knot. Once
the listing is confirmed the operator quarantines the address and re-renders the replica's config;
the MTA reloads it, and a message submitted then stays queued (the pool has no other address for
this replica: it waits, nothing bounces). Delisted, and `releaseAfter` later on the clock, the
address is released and the queued message leaves from it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from smtpinfra_mta.config import parse_config
from tests.e2e.common import NS, POOL_ADDRESSES, RCPT_DOMAIN, SINK_ADDR
from tests.e2e.test_dnsbl import TestClock, address
from tests.e2e.test_smtpserver import pods, server_manifest, swaks, tenant_password
from tests.kube import OPERATOR_NAMESPACE, OperatorProcess, apply, find, get, running_operator, wait_for
from tests.reputation.dnsbl_knot import GOOD, DnsblKnot, make_knot

pytestmark = [pytest.mark.dns, pytest.mark.e2e, pytest.mark.operator]

POOL, SERVER = "quarantine-pool", "qsend"
LISTED = POOL_ADDRESSES[2]  # the module's platform pool takes the first two


@pytest.fixture(scope="module")
def blocklists() -> Iterator[DnsblKnot]:
    with tempfile.TemporaryDirectory() as d:
        server = make_knot(Path(d), {LISTED: "127.0.0.3"})
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> TestClock:
    return TestClock(tmp_path_factory.mktemp("quarantine-clock") / "now")


@pytest.fixture(scope="module")
def operator(crds: Any, clock: TestClock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """This module's operator (the platform fixture's): the chart's RBAC, on the test clock."""
    env = {"SMTP_INFRA_FAKE_TIME_FILE": str(clock.path), "SMTP_INFRA_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE}
    with running_operator(crds, tmp_path_factory.mktemp("quarantine-operator"), env) as proc:
        yield proc


def reloads(pod_runner: Any, pod: str) -> int:
    """How often the pod's MTA processes reloaded their config (each of its two processes logs it)."""
    path = pod_runner.log_path(NS, pod, "mta")
    return path.read_text(errors="replace").count("config reloaded") if path.exists() else 0


def quarantined_in_config(cp: Any) -> set[str]:
    """The source addresses the rendered MTA configs mark quarantined (the configs as the MTA reads them)."""
    data = (find(cp, "configmap", f"{SERVER}-config", NS) or {}).get("data") or {}
    return {ip["address"] for text in data.values() for pool in parse_config(yaml.safe_load(text)).model_dump()
            ["pools"] for ip in pool["source_ips"] if ip["quarantined"]}


def test_a_quarantined_address_sends_nothing_until_released(platform: Any, knot: Any, blocklists: DnsblKnot,
                                                            clock: TestClock, sink_factory: Any,
                                                            pod_runner: Any) -> None:
    cp = platform
    sink = sink_factory(addr=SINK_ADDR)
    apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "IpPool", "metadata": {"name": POOL},
               "spec": {"addresses": [LISTED], "ptrTemplate": "mta-q{index}.e2e.example.test",
                        "dnsbl": {"zones": [GOOD], "resolver": blocklists.nameserver, "checkInterval": "1h",
                                  "confirmations": 2, "queryTimeout": "500ms"},
                        "quarantine": {"releaseAfter": "2h"}}})
    apply(cp, server_manifest(SERVER, knot, sink.port, replicas=1, pools=[POOL]))
    try:
        wait_for(lambda: cp.kubectl("-n", NS, "wait", "--for=condition=Ready", f"smtpserver/{SERVER}",
                                    "--timeout=60s", check=False).returncode == 0,
                 timeout=240, interval=1, what="the SmtpServer Ready")
        [(pod, ip)] = pods(cp, SERVER).items()
        password = tenant_password(cp)

        def submit(to: str) -> None:
            result = swaks(f"{ip}:587", password, to=to)
            assert result.returncode == 0, result.stdout[-2000:]

        def from_listed(to: str) -> list[Any]:
            return [m for m in sink.messages() if m.rcpts == [to]]

        submit(f"before@{RCPT_DOMAIN}")
        [before] = wait_for(lambda: from_listed(f"before@{RCPT_DOMAIN}"), timeout=60, what="the first message")
        assert before.client_addr == LISTED

        reloaded = reloads(pod_runner, pod)
        clock.advance(timedelta(hours=1))  # the second check confirms the listing
        wait_for(lambda: address(get(cp, "ippool", POOL), LISTED).get("quarantined"), timeout=90,
                 what="the address quarantined")
        wait_for(lambda: quarantined_in_config(cp) == {LISTED}, timeout=60, what="the replica's config saying so")
        wait_for(lambda: reloads(pod_runner, pod) >= reloaded + 2, timeout=60, what="both MTA processes reloaded")

        submit(f"held@{RCPT_DOMAIN}")
        # Held, not bounced: past the MTA's first delivery attempt nothing reached the sink, no DSN either.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert from_listed(f"held@{RCPT_DOMAIN}") == []
            time.sleep(0.5)
        assert [m for m in sink.messages() if b"Delivery Status Notification" in m.content
                or "mailer-daemon" in m.mail_from.lower()] == []

        blocklists.delist_address(LISTED)
        clock.advance(timedelta(hours=1))  # seen gone: releasing, still quarantined
        wait_for(lambda: address(get(cp, "ippool", POOL), LISTED).get("blocklists", [{}])[0].get("state")
                 == "Releasing", timeout=90, what="the listing seen gone")
        assert from_listed(f"held@{RCPT_DOMAIN}") == []
        clock.advance(timedelta(hours=2))  # releaseAfter passed
        wait_for(lambda: address(get(cp, "ippool", POOL), LISTED).get("quarantined") is False, timeout=90,
                 what="the address released")
        [held] = wait_for(lambda: from_listed(f"held@{RCPT_DOMAIN}"), timeout=120,
                          what="the held message delivered after the release")
        assert held.client_addr == LISTED
    finally:
        cp.kubectl("-n", NS, "delete", "smtpserver", SERVER, "--wait=false", check=False)
        cp.kubectl("delete", "ippool", POOL, "--wait=false", check=False)
