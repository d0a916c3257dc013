"""End to end: mail sent through a real MTA pod shows up in the Tenant's status.usage.

The operator reads each running MTA pod's /stats (on the pod IP, the HTTP port of the MTA config
contract) on its resync (2 s in tests), sums the quota counters per tenant and writes
status.usage only when the figures change.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.common import NS, RCPT_DOMAIN, SINK_ADDR
from tests.e2e.test_smtpserver import pods, server_manifest, swaks, tenant_password
from tests.kube import apply, get, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.operator]


def usage(cp: Any) -> dict[str, Any]:
    return (get(cp, "tenant", "e2e-acme").get("status") or {}).get("usage") or {}


def test_mail_sent_through_the_mta_shows_in_the_tenant_usage(platform, knot, sink_factory):
    cp = platform
    sink = sink_factory(addr=SINK_ADDR)
    apply(cp, server_manifest("metered", knot, sink.port, replicas=1))
    result = cp.kubectl("-n", NS, "wait", "--for=condition=Ready", "smtpserver/metered", "--timeout=120s",
                        check=False)
    assert result.returncode == 0, result.stderr + str(get(cp, "smtpserver", "metered", NS).get("status"))
    cp.kubectl("patch", "tenant", "e2e-acme", "--type=merge", "-p",
               '{"spec":{"quotas":{"perHour":100,"perDay":1000}}}')
    try:
        # Before any mail: the pod answered, nothing sent (the counters start at zero).
        first = wait_for(lambda: (u := usage(cp)) and u.get("dailyQuotaUsed") == "0.0" and u,
                         timeout=60, what="usage read from the MTA pod")
        assert (first["sentThisHour"], first["sentToday"]) == (0, 0)
        assert first["observedAt"] and not first.get("partial")

        ip = pods(cp, "metered")["metered-0"]
        password = tenant_password(cp)
        sent = swaks(f"{ip}:587", password, subject="metered one")
        assert "250 2.0.0" in sent.stdout, sent.stdout + sent.stderr
        sent = swaks(f"{ip}:587", password, to=f"a@{RCPT_DOMAIN},b@{RCPT_DOMAIN}", subject="metered two")
        assert "250 2.0.0" in sent.stdout, sent.stdout + sent.stderr

        # Counted per recipient, as the quotas count: 1 + 2.
        after = wait_for(lambda: (u := usage(cp)) and u.get("sentToday") == 3 and u, timeout=60,
                         what="usage counting the mail")
        assert after["sentThisHour"] == 3
        assert (after["hourlyQuotaUsed"], after["dailyQuotaUsed"]) == ("3.0", "0.3")
        assert after["observedAt"] >= first["observedAt"] and not after.get("partial")
        sink.wait_messages(2, timeout=60)

        # Nothing changes: several resync periods write no status (no hot loop, no observedAt churn).
        version = get(cp, "tenant", "e2e-acme")["metadata"]["resourceVersion"]
        time.sleep(8)
        assert get(cp, "tenant", "e2e-acme")["metadata"]["resourceVersion"] == version
    finally:
        cp.kubectl("patch", "tenant", "e2e-acme", "--type=json", "-p", '[{"op":"remove","path":"/spec/quotas"}]',
                   check=False)
        cp.kubectl("-n", NS, "delete", "smtpserver", "metered", "--wait=false", check=False)
