"""Quotas hold under concurrency and across replicas (issue 11 item 5).

Worst-case overshoot across replicas, as designed: 0. The operator renders each replica a share of
each quota (the shares sum exactly to the quota) and every replica reserves atomically within its
share before answering 250, so the accepted total can never exceed the quota.
"""

from __future__ import annotations

import smtplib
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from smtpinfra_mta.counters import window_id
from smtpinfra_operator.builders.mtaconfig import quota_share

from .conftest import MTA_ADDR, PASSWORDS, RunningMta, base_config, free_port

pytestmark = pytest.mark.mta


def _session(port: int) -> smtplib.SMTP:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c = smtplib.SMTP(MTA_ADDR, port, timeout=60)
    c.starttls(context=ctx)
    c.login("alice", PASSWORDS["alice"])
    return c


def concurrent_submissions(ports: list[int], rcpts: int, *, message_id: str | None = None) -> list[tuple[int, str]]:
    """One session per port entry; all send DATA at the same moment. Reply (code, text) to DATA of each."""
    barrier = threading.Barrier(len(ports))
    results: list[tuple[int, str]] = [(0, "")] * len(ports)

    def one(i: int, port: int) -> None:
        with _session(port) as c:
            c.mail("news@alpha.test")
            for r in range(rcpts):
                code, text = c.rcpt(f"u{i}-{r}@example.test")
                if code != 250:  # refused early (the quota is already used up): the reply of this session
                    results[i] = (code, text.decode())
                    barrier.wait(60)
                    return
            mid = message_id or f"<{i}.{port}@alpha.test>"
            barrier.wait(60)
            code, text = c.data(f"From: news@alpha.test\r\nMessage-ID: {mid}\r\nSubject: q\r\n\r\nhi\r\n".encode())
            results[i] = (code, text.decode())

    threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(ports)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def counted(mta: RunningMta) -> int:
    assert mta.app.counters is not None
    return int(mta.call(lambda: mta.app.counters.get("quota:alpha", "hour")))


def _cfg(tmp_path: Path, tls_files: Any, hashes: dict[str, str], quotas: dict[str, int]) -> dict[str, Any]:
    cfg = base_config(tmp_path, tls_files, hashes)
    cfg["limits"]["max_recipients"] = 10
    cfg["tenants"][0]["quotas"] = quotas
    return cfg


def test_concurrent_data_cannot_overshoot_hourly_quota(tmp_path: Path, tls_files: Any,
                                                        password_hashes: dict[str, str], mta_factory: Any) -> None:
    """per_hour=10, three concurrent 5-recipient messages: two accepted, one 452, 10 counted (was 3 x 250)."""
    mta = mta_factory(_cfg(tmp_path, tls_files, password_hashes, {"per_hour": 10}))
    results = concurrent_submissions([mta.submission_port] * 3, 5)
    accepted = [r for r in results if r[0] == 250]
    refused = [r for r in results if r[0] != 250]
    assert len(accepted) == 2, results
    assert [(c, t.split(" ")[0]) for c, t in refused] == [(452, "4.7.1")], results
    assert counted(mta) == 10
    assert len(mta.app.spool.queued_ids()) == 2


def test_duplicate_submission_releases_its_reservation(tmp_path: Path, tls_files: Any,
                                                       password_hashes: dict[str, str], mta_factory: Any) -> None:
    mta = mta_factory(_cfg(tmp_path, tls_files, password_hashes, {"per_hour": 10}))
    for _ in range(2):
        (result,) = concurrent_submissions([mta.submission_port], 4, message_id="<same@alpha.test>")
        assert result[0] == 250, result
    assert counted(mta) == 4
    assert len(mta.app.spool.queued_ids()) == 1


def test_two_replicas_never_exceed_the_quota_together(tmp_path: Path, tls_files: Any,
                                                      password_hashes: dict[str, str], mta_factory: Any) -> None:
    """Two MTA replicas, each with the share the operator renders; clients hit both at once."""
    quota, replicas = 11, 2
    mtas: list[RunningMta] = []
    for ordinal in range(replicas):
        share = quota_share(quota, replicas, ordinal)
        assert share is not None
        d = tmp_path / f"replica-{ordinal}"
        d.mkdir()
        mtas.append(mta_factory(_cfg(d, tls_files, password_hashes, {"per_hour": quota, "per_hour_share": share})))
    assert sum(quota_share(quota, replicas, o) or 0 for o in range(replicas)) == quota
    ports = [m.submission_port for m in mtas] * 5  # 10 concurrent sessions, 5 per replica
    first = concurrent_submissions(ports, 2)
    second = concurrent_submissions(ports, 1)  # single recipients fill what 2-recipient messages left
    accepted = sum(2 for c, _ in first if c == 250) + sum(1 for c, _ in second if c == 250)
    assert all(c in (250, 452) for c, _ in first + second), first + second
    assert all(t.startswith("4.7.1") for c, t in first + second if c == 452)
    assert accepted <= quota  # the stated worst-case overshoot is 0
    assert accepted == quota  # and nothing of the quota is lost when clients reach both replicas
    assert sum(counted(m) for m in mtas) == quota
    assert window_id("hour")  # counted in the current UTC hour window


def test_share_of_zero_is_temporary_quota_zero_is_permanent(tmp_path: Path, tls_files: Any,
                                                            password_hashes: dict[str, str],
                                                            mta_factory: Any) -> None:
    mta = mta_factory(_cfg(tmp_path, tls_files, password_hashes, {"per_hour": 1, "per_hour_share": 0}))
    with _session(mta.submission_port) as c:
        c.mail("news@alpha.test")
        code, text = c.rcpt("u@example.test")
    assert (code, text.decode()[:5]) == (452, "4.7.1")
    (tmp_path / "b").mkdir()
    mta0 = mta_factory(_cfg(tmp_path / "b", tls_files, password_hashes, {"per_hour": 0}))
    with _session(mta0.submission_port) as c:
        c.mail("news@alpha.test")
        code, text = c.rcpt("u@example.test")
    assert (code, text.decode()[:5]) == (550, "5.7.1")


def test_two_replicas_sharing_postgresql_accept_exactly_the_quota(tmp_path: Path, tls_files: Any,
                                                                  password_hashes: dict[str, str],
                                                                  mta_factory: Any, postgres_url: str) -> None:
    """With quota_store.url the replicas reserve in one database: exact, and no replica refuses while the
    quota has room (all sessions may land on one replica)."""
    quota = 9
    mtas: list[RunningMta] = []
    for ordinal in range(2):
        d = tmp_path / f"replica-{ordinal}"
        d.mkdir()
        cfg = _cfg(d, tls_files, password_hashes, {"per_hour": quota})
        cfg["quota_store"] = {"url": postgres_url}
        mtas.append(mta_factory(cfg))
    ports = [m.submission_port for m in mtas] * 6  # 12 concurrent 1-recipient messages against 9
    results = concurrent_submissions(ports, 1)
    assert sum(c == 250 for c, _ in results) == quota, results
    assert all(c == 452 and t.startswith("4.7.1 Hourly sending quota of 9") for c, t in results if c != 250)
    assert sum(counted(m) for m in mtas) == quota  # each replica's /stats figure: its own part
    # One replica alone may use what is left of the whole quota (no per-replica share).
    again = concurrent_submissions([mtas[0].submission_port], 1)
    assert again[0][0] == 452


def test_unreachable_quota_store_is_a_temporary_failure(tmp_path: Path, tls_files: Any,
                                                        password_hashes: dict[str, str], mta_factory: Any) -> None:
    cfg = _cfg(tmp_path, tls_files, password_hashes, {"per_hour": 5})
    cfg["quota_store"] = {"url": f"postgresql://nobody@127.0.0.56:{free_port('127.0.0.56')}/none?connect_timeout=2"}
    mta = mta_factory(cfg)
    (result,) = concurrent_submissions([mta.submission_port], 1)
    assert result[0] == 451 and result[1].startswith("4.3.0"), result
    assert mta.app.spool.queued_ids() == []
