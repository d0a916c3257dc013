"""GDPR erasure: after `erase`, the address is in no file the MTA keeps, and it stays suppressed by its hash."""

from __future__ import annotations

import asyncio
import http.client
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from smtpinfra_mta.campaign_contract import HASH_PREFIX
from smtpinfra_mta.erasure import make_hasher
from smtpinfra_mta.quarantine import Quarantine
from smtpinfra_mta.spool import SpooledMessage
from smtpinfra_mta.suppression import open_store

from .conftest import MTA_ADDR, Dns, RunningMta, Sink, base_config, submit, wait_for

pytestmark = pytest.mark.mta

ADDRESS = "Erased.Person@example.test"
TOKEN = "stats-token-for-the-operator"


def _post_erase(mta: RunningMta, body: dict[str, Any], token: str | None = TOKEN) -> tuple[int, bytes]:
    assert mta.app.http_port is not None
    conn = http.client.HTTPConnection(MTA_ADDR, mta.app.http_port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", "/erase", body=json.dumps(body).encode(), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _files_mentioning(root: Path, needle: str) -> list[Path]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and needle.lower().encode() in p.read_bytes().lower():
            hits.append(p)
    return hits


def _suppressed_count(mta: RunningMta) -> float:
    return sum(s.value for m in mta.app.metrics.registry.collect() if m.name == "smtpinfra_mta_suppressed"
               for s in m.samples if s.name.endswith("_total"))


@pytest.mark.dns
def test_erase_over_http_leaves_only_the_hash(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str],
                                              mta_factory: Any, sink_factory: Any, dns_server: Dns) -> None:
    sink: Sink = sink_factory()
    cfg = base_config(tmp_path, tls_files, password_hashes, dns=dns_server, sink_port=sink.port)
    spool = Path(cfg["spool"]["directory"])
    cfg["suppression"]["url"] = f"sqlite:///{spool / 'suppression.db'}"  # everything under the state dir
    (tmp_path / "stats.token").write_text(TOKEN + "\n")
    cfg["http"]["stats_token_file"] = str(tmp_path / "stats.token")
    mta: RunningMta = mta_factory(cfg)

    assert submit(mta, to=ADDRESS, extra=["--add-header", "Feedback-ID: spring:alpha:shop:smtpinfra"]).has("250")
    sink.wait_messages(1, timeout=30)
    wait_for(lambda: mta.app.spool.queued_ids() == [])
    assert mta.app.suppression is not None
    mta.run(mta.app.suppression.add("alpha", ADDRESS, "complaint: ARF abuse"))
    report = SpooledMessage(id="q-report", tenant="_inbound", pool="", mail_from="", rcpts=["fbl@bounces.mta.test"],
                            received_at=0.0, kind="inbound")
    Quarantine(spool / "quarantine", max_bytes=10**6, max_age=86400).put(
        report, f"To: {ADDRESS.lower()}\r\n\r\nabuse\r\n".encode(), "malformed", "test")
    assert _files_mentioning(spool, ADDRESS)  # the test can see the address where it is

    assert _post_erase(mta, {"tenant": "alpha", "address": ADDRESS}, token=None)[0] == 401
    assert _post_erase(mta, {"tenant": "alpha", "address": ADDRESS}, token="wrong")[0] == 401
    assert _post_erase(mta, {"tenant": "alpha"})[0] == 400
    status, body = _post_erase(mta, {"tenant": "alpha", "address": ADDRESS})
    assert status == 200, body
    assert json.loads(body) == {"tenant": "alpha", "suppression_entry": True, "quarantined_reports": 1}
    assert ADDRESS.lower().encode() not in body.lower()

    assert _files_mentioning(spool, ADDRESS) == []
    entries = mta.run(mta.app.suppression.entries("alpha"))
    assert [(e.address[:len(HASH_PREFIX)], e.reason) for e in entries] == [(HASH_PREFIX, "erased")]

    before = _suppressed_count(mta)
    assert submit(mta, to=ADDRESS.upper().replace("EXAMPLE", "example")).has("250 2.0.0 OK queued")
    wait_for(lambda: _suppressed_count(mta) == before + 1, timeout=30)
    assert len(sink.messages()) == 1  # only the message from before the erasure


def test_erase_command_on_a_local_spool(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str]) -> None:
    cfg = base_config(tmp_path, tls_files, password_hashes)
    (tmp_path / "erasure.secret").write_bytes(b"a-server-secret-of-enough-bytes\n")
    cfg["unsubscribe"] = {"erasure_salt_file": str(tmp_path / "erasure.secret")}
    path = tmp_path / "mta.yaml"
    path.write_text(yaml.safe_dump(cfg))
    db = Path(cfg["suppression"]["url"].removeprefix("sqlite://"))

    async def seed() -> None:
        store = open_store(cfg["suppression"]["url"])
        await store.open()
        await store.add("beta", "leaver@example.test", "unsubscribe")
        await store.close()
    asyncio.run(seed())

    cmd = [sys.executable, "-m", "smtpinfra_mta", "erase", "--config", str(path), "beta", "leaver@example.test"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["suppression_entry"] is True
    assert b"leaver@example.test" not in b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))

    async def check() -> tuple[bool, bool]:
        store = open_store(cfg["suppression"]["url"])
        store.hasher = make_hasher(b"a-server-secret-of-enough-bytes")
        await store.open()
        try:
            return (await store.is_suppressed("beta", "Leaver@EXAMPLE.test"),
                    await store.is_suppressed("alpha", "leaver@example.test"))
        finally:
            await store.close()
    assert asyncio.run(check()) == (True, False)  # suppressed by the hash, for that tenant only

    bad = subprocess.run([*cmd[:-1], "not-an-address"], capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "not an address" in bad.stderr


def test_postgres_store_matches_and_erases_by_hash(postgres_url: str) -> None:
    async def scenario() -> None:
        store = open_store(postgres_url)
        store.hasher = make_hasher(b"another-server-secret-0123456789")
        await store.open()
        try:
            await store.add("alpha", "pg.person@example.test", "hard bounce 5.1.1")
            assert await store.erase("alpha", "PG.Person@example.test") is True
            entries = await store.entries("alpha")
            assert [e.reason for e in entries if e.address.startswith(HASH_PREFIX)] == ["erased"]
            assert not [e for e in entries if "pg.person" in e.address]
            assert await store.is_suppressed("alpha", "pg.person@example.test")
            assert not await store.is_suppressed("beta", "pg.person@example.test")
            assert await store.erase("alpha", "pg.person@example.test") is False  # idempotent
        finally:
            await store.close()
    asyncio.run(scenario())
