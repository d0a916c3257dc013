"""One VERP key per server, shared by the replicas and rotatable (issue 11, item 9), with real MTAs.

Two MTAs stand for two replicas of one server: they mount the same key files. Mail sent by replica 0
bounces back to replica 1, which must match it. After a rotation (``current`` moves to ``previous``,
a new ``current``) and a config reload, replica 0 signs with the new key and replica 1 matches both
the new return paths and those signed before the rotation.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from smtpinfra_mta.config import parse_config
from smtpinfra_mta.verp import Verp

from .conftest import Dns, RunningMta, Sink, base_config, submit, wait_for
from .hostile import RP, send_report
from .test_feedback import dsn

pytestmark = pytest.mark.mta


def _replica(tmp_path: Path, name: str, keys: Path, tls_files: Any, password_hashes: dict[str, str],
             dns: Dns, sink: Sink) -> dict[str, Any]:
    d = tmp_path / name
    d.mkdir()
    cfg = base_config(d, tls_files, password_hashes, dns=dns, sink_port=sink.port)
    cfg["bounces"]["verp_key_files"] = [str(keys / "current"), str(keys / "previous")]
    return cfg


def _suppressed(mta: RunningMta) -> set[str]:
    assert mta.app.suppression is not None
    return {e.address for e in mta.run(mta.app.suppression.entries("alpha"))}


def _bounce(mta: RunningMta, return_path: str, rcpt: str) -> None:
    reply = send_report(mta, return_path, dsn(return_path, rcpt, "5.1.1", "550 5.1.1 User unknown").encode())
    assert reply.startswith("250"), reply


@pytest.mark.dns
def test_any_replica_matches_any_replicas_bounces_across_a_rotation(
        tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], mta_factory: Any, sink_factory: Any,
        dns_server: Dns) -> None:
    keys = tmp_path / "verp-secret"
    keys.mkdir()
    old_key = secrets.token_hex(32)
    (keys / "current").write_text(old_key)
    sink: Sink = sink_factory()
    cfg0 = _replica(tmp_path, "r0", keys, tls_files, password_hashes, dns_server, sink)
    cfg1 = _replica(tmp_path, "r1", keys, tls_files, password_hashes, dns_server, sink)
    r0: RunningMta = mta_factory(cfg0)
    r1: RunningMta = mta_factory(cfg1)

    # replica 0 sends; the remote MX bounces later, and the DSN lands on replica 1
    for rcpt in ("a@example.test", "b@example.test"):
        assert submit(r0, to=rcpt).has("250 2.0.0 OK queued")
    sent = {m.rcpts[0]: m.mail_from for m in sink.wait_messages(2)}
    _bounce(r1, sent["a@example.test"], "a@example.test")
    wait_for(lambda: "a@example.test" in _suppressed(r1), timeout=60)

    # rotation: the Secret now holds a new current and the old one as previous; both replicas reload
    new_key = secrets.token_hex(32)
    (keys / "previous").write_text(old_key)
    (keys / "current").write_text(new_key)
    r0.call(lambda: r0.app.reload(parse_config(cfg0)))
    r1.call(lambda: r1.app.reload(parse_config(cfg1)))

    assert submit(r0, to="c@example.test").has("250 2.0.0 OK queued")
    sent.update({m.rcpts[0]: m.mail_from for m in sink.wait_messages(3)})
    # the new message is signed with the new key, not the old one
    assert sent["c@example.test"] == Verp(new_key.encode(), RP).address("alpha", "c@example.test")
    assert sent["c@example.test"] != Verp(old_key.encode(), RP).address("alpha", "c@example.test")
    # replica 1 matches both: the new return path and one signed before the rotation
    _bounce(r1, sent["c@example.test"], "c@example.test")
    _bounce(r1, sent["b@example.test"], "b@example.test")
    wait_for(lambda: {"b@example.test", "c@example.test"} <= _suppressed(r1), timeout=60)
    wait_for(lambda: r1.app.spool.queued_ids() == [], timeout=60)

    # a third key rotates the oldest out: its return paths no longer match (forged or stale alike)
    (keys / "previous").write_text(new_key)
    (keys / "current").write_text(secrets.token_hex(32))
    r1.call(lambda: r1.app.reload(parse_config(cfg1)))
    stale = Verp(old_key.encode(), RP).address("alpha", "d@example.test")
    _bounce(r1, stale, "d@example.test")
    wait_for(lambda: r1.app.spool.queued_ids() == [], timeout=60)
    assert "d@example.test" not in _suppressed(r1)
