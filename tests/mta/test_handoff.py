"""Hand-off between replicas: mail that may not leave from this replica's address leaves from a peer's.

Two real MTAs (as two replicas of one server: one pool, one address each, one shared hand-off token),
real mail to smtp-sink, the source address of each message observed there.
"""

from __future__ import annotations

import http.client
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpinfra_mta.config import Pool, parse_config
from smtpinfra_mta.handoff import choose_peer, decode, encode
from smtpinfra_mta.spool import SpooledMessage

from .conftest import MTA_ADDR, SRC_A1, SRC_A2, RunningMta, base_config, submit, wait_for

pytestmark = [pytest.mark.mta, pytest.mark.dns]

TOKEN = "peer-token-of-the-server"


@pytest.fixture
def replicas(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], sink_factory: Any,
             dns_server: Any) -> dict[str, Any]:
    """Config dicts of two replicas of one server sharing pool alpha: "a" sends from SRC_A1, "b" from SRC_A2."""
    sink = sink_factory()
    token = tmp_path / "handoff-token"
    token.write_text(TOKEN + "\n")
    out: dict[str, Any] = {"sink": sink}
    for name, address in (("a", SRC_A1), ("b", SRC_A2)):
        (tmp_path / name).mkdir()
        cfg = base_config(tmp_path / name, tls_files, password_hashes, dns=dns_server, sink_port=sink.port)
        cfg["pools"][0]["source_ips"] = [{"address": address, "ehlo_name": f"{name}.alpha-pool.test"}]
        cfg["http"]["handoff_token_file"] = str(token)
        out[name] = cfg
    return out


def _counter(mta: RunningMta, name: str, **labels: str) -> float:
    reg = mta.app.metrics.registry
    return sum(s.value for m in reg.collect() if m.name == name for s in m.samples
               if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()))


def _peer(mta: RunningMta, warm: bool = True) -> dict[str, Any]:
    return {"host": MTA_ADDR, "port": mta.app.http_port, "warm": warm}


def test_a_quarantined_replica_hands_its_queue_to_a_peer_that_sends_it(replicas: dict[str, Any],
                                                                         mta_factory: Any) -> None:
    sink = replicas["sink"]
    b: RunningMta = mta_factory(replicas["b"])
    cfg_a = replicas["a"]
    cfg_a["pools"][0]["source_ips"][0]["quarantined"] = True
    cfg_a["pools"][0]["move_when_blocked"] = True
    cfg_a["pools"][0]["peers"] = [_peer(b)]
    a: RunningMta = mta_factory(cfg_a)
    for i in range(3):
        assert submit(a, to=f"h{i}@example.test").has("250 2.0.0 OK queued")
    msgs = sink.wait_messages(3, timeout=30)
    assert Counter(m.client_addr for m in msgs) == {SRC_A2: 3}  # every one left from the peer's address
    wait_for(lambda: not a.app.spool.queued_ids() and not b.app.spool.queued_ids(), timeout=30)
    assert _counter(a, "smtpinfra_mta_handed_over", direction="sent") == 3
    assert _counter(b, "smtpinfra_mta_handed_over", direction="received") == 3
    assert _counter(a, "smtpinfra_mta_accepted") == 3 and _counter(b, "smtpinfra_mta_accepted") == 0
    assert all(m.content.count(b"\r\nReceived:") + m.content.startswith(b"Received:") == 1 for m in msgs)


def test_blocked_mail_waits_when_the_pool_does_not_move_it_and_taken_over_mail_is_never_handed_back(
        replicas: dict[str, Any], mta_factory: Any) -> None:
    sink = replicas["sink"]
    cfg_b = replicas["b"]
    b: RunningMta = mta_factory(cfg_b)
    cfg_a = replicas["a"]
    cfg_a["pools"][0]["source_ips"][0]["quarantined"] = True
    cfg_a["pools"][0]["peers"] = [_peer(b)]  # move_when_blocked is off
    a: RunningMta = mta_factory(cfg_a)
    assert submit(a, to="w0@example.test").has("250 2.0.0 OK queued")
    wait_for(lambda: _counter(a, "smtpinfra_mta_throttle_waits", reason="warmup_or_suspend") >= 1, timeout=30)
    assert len(a.app.spool.queued_ids()) == 1 and _counter(a, "smtpinfra_mta_handed_over") == 0

    # The pool moves blocked mail now, but the peer's own address is quarantined too and it may move its
    # mail back: what it took over stays with it (no ping-pong), what it accepted itself may go to a.
    cfg_b["pools"][0]["source_ips"][0]["quarantined"] = True
    cfg_b["pools"][0]["move_when_blocked"] = True
    cfg_b["pools"][0]["peers"] = [_peer(a)]
    b.call(lambda: b.app.reload(parse_config(cfg_b)))
    cfg_a["pools"][0]["move_when_blocked"] = True
    a.call(lambda: a.app.reload(parse_config(cfg_a)))
    wait_for(lambda: _counter(b, "smtpinfra_mta_handed_over", direction="received") == 1, timeout=30)
    # held at b (its first hold: b's address was free until now), not handed back
    wait_for(lambda: _counter(b, "smtpinfra_mta_throttle_waits", reason="warmup_or_suspend") >= 1, timeout=30)
    assert _counter(b, "smtpinfra_mta_handed_over", direction="sent") == 0
    assert len(b.app.spool.queued_ids()) == 1 and not a.app.spool.queued_ids()

    cfg_b["pools"][0]["source_ips"][0]["quarantined"] = False  # released: it leaves from b, once
    b.call(lambda: b.app.reload(parse_config(cfg_b)))
    [msg] = sink.wait_messages(1, timeout=30)
    assert (msg.client_addr, msg.rcpts) == (SRC_A2, ["w0@example.test"])


def test_over_the_warming_cap_goes_to_a_warm_peer_only_when_the_pool_overflows(replicas: dict[str, Any],
                                                                                mta_factory: Any) -> None:
    sink = replicas["sink"]
    b: RunningMta = mta_factory(replicas["b"])
    cfg_a = replicas["a"]
    cfg_a["throttling"] = {"warmup": [{"source_ip": SRC_A1, "per_day": 1}]}
    cfg_a["pools"][0]["peers"] = [_peer(b, warm=False)]  # a warming peer takes no overflow
    cfg_a["pools"][0]["overflow"] = "warm-addresses"
    a: RunningMta = mta_factory(cfg_a)
    for i in range(3):
        assert submit(a, to=f"o{i}@example.test").has("250 2.0.0 OK queued")
    sink.wait_messages(1, timeout=30)
    wait_for(lambda: _counter(a, "smtpinfra_mta_throttle_waits", reason="warmup_or_suspend") >= 1, timeout=30)
    assert len(sink.messages()) == 1 and len(a.app.spool.queued_ids()) == 2

    cfg_a["pools"][0]["peers"] = [_peer(b, warm=True)]
    a.call(lambda: a.app.reload(parse_config(cfg_a)))
    msgs = sink.wait_messages(3, timeout=30)
    assert Counter(m.client_addr for m in msgs) == {SRC_A1: 1, SRC_A2: 2}
    assert sorted(r for m in msgs for r in m.rcpts) == [f"o{i}@example.test" for i in range(3)]


def _post(mta: RunningMta, body: bytes, token: str | None = TOKEN) -> tuple[int, str]:
    conn = http.client.HTTPConnection(MTA_ADDR, mta.app.http_port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request("POST", "/handoff", body=body, headers=headers)
    answer = conn.getresponse()
    return answer.status, answer.read().decode()


def _message(rcpts: list[str]) -> SpooledMessage:
    return SpooledMessage(id="18ed85220000000000000000abcd", tenant="alice", pool="alpha",
                          mail_from="news@alpha.test", rcpts=rcpts, received_at=1.0)


def test_the_endpoint_takes_only_authenticated_well_formed_hand_offs_and_a_repeat_once(
        replicas: dict[str, Any], mta_factory: Any) -> None:
    sink = replicas["sink"]
    b: RunningMta = mta_factory(replicas["b"])
    content = b"From: news@alpha.test\r\nTo: r@example.test\r\nSubject: x\r\n\r\nHello\r\n"
    good = encode(_message(["r@example.test"]), ["r@example.test"], content)
    assert _post(b, good, token=None)[0] == 401
    assert _post(b, good, token="wrong")[0] == 401
    assert _post(b, b"not json\n" + content)[0] == 400
    bad_pool = encode(SpooledMessage(**{**_message(["r@example.test"]).__dict__, "pool": "nope"}),
                      ["r@example.test"], content)
    assert _post(b, bad_pool)[0] == 503
    header_injection = good.replace(b'"news@alpha.test"', b'"news@alpha.test\\r\\nX: y"', 1)
    assert _post(b, header_injection)[0] == 400
    too_big = b"{}\n" + b"x" * (b.app.cfg.limits.max_message_size + 70_000)
    assert _post(b, too_big)[0] == 413
    first = _post(b, good)
    again = _post(b, good)  # the sender lost the first answer and tried again
    assert first[0] == again[0] == 200 and first[1] == again[1], (first, again)
    [msg] = sink.wait_messages(1, timeout=30)
    assert msg.rcpts == ["r@example.test"] and msg.content.endswith(b"Hello\r\n")
    wait_for(lambda: not b.app.spool.queued_ids(), timeout=30)
    assert len(sink.messages()) == 1


def test_choose_peer_prefers_warm_peers_and_never_moves_mail_a_wait_pool_keeps() -> None:
    pool = Pool.model_validate({"name": "alpha", "source_ips": [{"address": SRC_A1, "ehlo_name": "a.test"}],
                                "peers": [{"host": "p1", "warm": False}, {"host": "p2", "warm": True}]})
    never = lambda address: False  # noqa: E731
    always = lambda address: True  # noqa: E731
    assert choose_peer(pool, always, always, 0) is None  # overflow "wait"
    overflowing = pool.model_copy(update={"overflow": "warm-addresses"})
    assert [choose_peer(overflowing, always, always, t).host for t in range(2)] == ["p2", "p2"]
    assert choose_peer(overflowing, always, never, 0) is None  # not at its cap: something else holds it
    assert choose_peer(overflowing, never, never, 0) is None  # a warm address here: nothing to move
    blocked = pool.model_copy(update={"source_ips": [pool.source_ips[0].model_copy(update={"paused": True})]})
    assert choose_peer(blocked, never, never, 0) is None  # move_when_blocked is off
    moving = blocked.model_copy(update={"move_when_blocked": True})
    assert choose_peer(moving, never, never, 1).host == "p2"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_decode_refuses_any_malformed_body_with_a_value_error(body: bytes) -> None:
    try:
        msg, _ = decode(body, max_rcpts=100)
    except ValueError:
        return
    assert msg.handed_off and msg.rcpts and msg.idempotency_key


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["origin", "tenant", "pool", "mail_from", "rcpts", "received_at", "kind",
                                        "campaign"]),
                       st.none() | st.booleans() | st.integers() | st.text(max_size=40)
                       | st.lists(st.text(max_size=20), max_size=3)))
def test_decode_refuses_wrongly_typed_envelopes(envelope: dict[str, Any]) -> None:
    try:
        msg, _ = decode(json.dumps(envelope).encode() + b"\nbody", max_rcpts=100)
    except ValueError:
        return
    assert isinstance(msg.tenant, str) and all(isinstance(r, str) for r in msg.rcpts)
