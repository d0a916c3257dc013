"""/stats reports each tenant's accepted recipients this hour and day (what Tenant status.usage sums)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from smtpinfra_mta.counters import window_id

from .conftest import MTA_ADDR, RunningMta, base_config, submit

pytestmark = pytest.mark.mta


def _stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{MTA_ADDR}:{port}/stats", timeout=5) as r:
        result: dict[str, Any] = json.loads(r.read())
        return result


def test_stats_report_accepted_per_tenant(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str],
                                          mta_factory: Any) -> None:
    mta: RunningMta = mta_factory(base_config(tmp_path, tls_files, password_hashes))
    port = mta.app.http_port
    assert port is not None
    before = _stats(port)["tenants"]
    assert before["accepted"] == {"alpha": {"hour": 0, "day": 0}, "beta": {"hour": 0, "day": 0},
                                  "gamma": {"hour": 0, "day": 0}}
    assert submit(mta).has("250 2.0.0 OK queued")
    assert submit(mta, to="user@example.test,other@example.test").has("250 2.0.0 OK queued")  # two recipients
    assert submit(mta, password="nope").has("535")  # refused logins count nothing
    tenants = _stats(port)["tenants"]
    now = time.time()
    assert tenants["hour"] in {window_id("hour", now), window_id("hour", now - 5)}
    assert tenants["day"] in {window_id("day", now), window_id("day", now - 5)}
    assert tenants["accepted"]["alpha"] == {"hour": 3, "day": 3}  # counted per recipient, as the quota
    assert tenants["accepted"]["beta"] == {"hour": 0, "day": 0}
