"""Suppression lists in both real database backends, and their effect on delivery."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from smtpinfra_mta.suppression import PostgresStore, SqliteStore, SuppressionStore, open_store

from .conftest import DSN_SINK_ADDR, SRC_A1, Dns, RunningMta, base_config, submit, wait_for

pytestmark = pytest.mark.mta


async def _exercise(store: SuppressionStore) -> None:
    await store.open()
    try:
        assert not await store.is_suppressed("t1", "a@x.test")
        await store.add("t1", "A@X.test", "manual")
        await store.add("t1", "a@x.test", "again")  # idempotent
        assert await store.is_suppressed("t1", "a@x.test")
        assert not await store.is_suppressed("t2", "a@x.test")  # lists are per tenant
        entries = await store.entries("t1")
        assert [(e.address, e.reason) for e in entries] == [("a@x.test", "manual")]
        assert await store.remove("t1", "a@x.test")
        assert not await store.remove("t1", "a@x.test")
        assert not await store.is_suppressed("t1", "a@x.test")
    finally:
        await store.close()


def test_sqlite_backend(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    assert isinstance(store, SqliteStore)
    asyncio.run(_exercise(store))
    # durable: a new connection sees earlier writes
    async def persist() -> None:
        s1 = open_store(f"sqlite:///{tmp_path}/p.db")
        await s1.open()
        await s1.add("t", "z@x.test", "bounce")
        await s1.close()
        s2 = open_store(f"sqlite:///{tmp_path}/p.db")
        await s2.open()
        assert await s2.is_suppressed("t", "z@x.test")
        await s2.close()
    asyncio.run(persist())


def test_postgres_backend(postgres_url: str) -> None:
    store = open_store(postgres_url)
    assert isinstance(store, PostgresStore)
    asyncio.run(_exercise(store))


def test_unknown_url_scheme() -> None:
    with pytest.raises(ValueError, match="unsupported suppression database URL 'mysql'"):
        open_store("mysql://x")


@pytest.mark.dns
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_suppressed_recipient_is_not_delivered_and_hard_bounce_suppresses(
    backend: str, tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], dns_server: Dns,
    sink_factory: Any, mta_factory: Any, request: pytest.FixtureRequest,
) -> None:
    sink = sink_factory()
    dsn_sink = sink_factory(port=sink.port, addr=DSN_SINK_ADDR, name="dsn")
    cfg = base_config(tmp_path, tls_files, password_hashes, dns=dns_server, sink_port=sink.port)
    if backend == "postgres":
        cfg["suppression"]["url"] = request.getfixturevalue("postgres_url")
        tenant = f"alpha-{uuid.uuid4().hex[:8]}"  # shared database: keep this test's rows apart
    else:
        tenant = "alpha"
    cfg["tenants"][0]["name"] = tenant
    mta: RunningMta = mta_factory(cfg)
    store = mta.app.suppression
    assert store is not None
    mta.run(store.add(tenant, "blocked@example.test", "unsubscribed"))
    assert submit(mta, to="blocked@example.test,open@example.test").has("250 2.0.0 OK queued")
    [m] = sink.wait_messages(1)
    assert m.rcpts == ["open@example.test"]
    wait_for(lambda: mta.app.spool.queued_ids() == [])
    assert mta.app.metrics.registry.get_sample_value(
        "smtpinfra_mta_suppressed_total", {"tenant": tenant, "pool": "alpha", "source_ip": "none",
                                           "provider": "other"}) == 1
    assert dsn_sink.messages() == []  # suppression is silent, not a bounce
    # a hard bounce puts the recipient on the list
    sink.stop()
    sink_factory("-f", "RCPT", "-B", "550 5.1.1 User unknown", port=sink.port, name="reject")
    assert submit(mta, to="gone@example.test").has("250 2.0.0 OK queued")
    wait_for(lambda: mta.run(store.is_suppressed(tenant, "gone@example.test")))
    # the remote's 550 from our pool address was the hard bounce that did it
    assert mta.app.metrics.registry.get_sample_value(
        "smtpinfra_mta_bounced_total", {"tenant": tenant, "pool": "alpha", "source_ip": SRC_A1,
                                        "provider": "other", "bounce_class": "hard"}) == 1
