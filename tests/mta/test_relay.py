"""Open-relay matrix: no listener relays anything without authentication, whatever the address trick."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpinfra_mta.config import ConfigError, parse_config
from smtpinfra_mta.policy import check_inbound_rcpt

from .conftest import MTA_ADDR, Dns, RunningMta, Sink, base_config, swaks, wait_for

pytestmark = pytest.mark.mta

BOUNCE = "bounces.mta.test"

# (recipient as sent inside RCPT TO:<...>, expected reply prefix)
MATRIX = [
    ("victim@example.test", "550 5.7.1"),
    ("victim@other.test", "550 5.7.1"),
    (f"victim%example.test@{BOUNCE}", "550 5.7.1"),
    (f'"victim@example.test"@{BOUNCE}', "550 5.7.1"),
    (f"example.test!victim@{BOUNCE}", "550 5.7.1"),
    (f"@{BOUNCE}:victim@example.test", "553 5.1.3"),
    (f"@{BOUNCE},@mta.test:victim@example.test", "553 5.1.3"),
    (f"victim@example.test@{BOUNCE}", "553 5.1.3"),
    ("victim@[127.0.0.42]", "550 5.7.1"),
    (f"victim@sub.{BOUNCE}", "550 5.7.1"),
    (f"victim@{BOUNCE}.example.test", "550 5.7.1"),
    ("victim", "550 5.7.1"),
]


@pytest.fixture
def relay_env(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str], mta_factory: Any,
              sink_factory: Any, dns_server: Dns) -> tuple[RunningMta, Sink]:
    sink = sink_factory()
    cfg = base_config(tmp_path, tls_files, password_hashes, dns=dns_server, sink_port=sink.port)
    return mta_factory(cfg), sink


def _rcpt_reply(port: int, rcpt: str, *extra: str) -> str:
    r = swaks("--server", f"{MTA_ADDR}:{port}", "--ehlo", "attacker.test", "--from", "spammer@example.test",
              "--to", rcpt, "--quit-after", "RCPT", *extra)
    replies = [x for x in r.replies() if x[3] == " "]
    return replies[-2] if replies and replies[-1].startswith("221") else (replies[-1] if replies else r.transcript)


@pytest.mark.dns
def test_inbound_port_relays_nothing(relay_env: tuple[RunningMta, Sink]) -> None:
    mta, sink = relay_env
    results = {rcpt: _rcpt_reply(mta.inbound_port, rcpt) for rcpt, _ in MATRIX}
    for rcpt, expected in MATRIX:
        assert results[rcpt].startswith(expected), (rcpt, results[rcpt])
    # the bounce domain itself is accepted (case-insensitively), with a null sender too
    assert _rcpt_reply(mta.inbound_port, f"bounce+abc@{BOUNCE.upper()}").startswith("250 2.1.5")
    r = swaks("--server", f"{MTA_ADDR}:{mta.inbound_port}", "--from", "", "--to", f"dsn@{BOUNCE}")
    assert r.has("250 2.0.0 OK queued as"), r.replies()
    time.sleep(1.0)
    assert sink.messages() == [], "something was relayed"
    assert mta.app.spool.queued_ids() == []  # the inbound report was processed, nothing queued outbound


@pytest.mark.dns
def test_submission_ports_relay_nothing_without_auth(relay_env: tuple[RunningMta, Sink]) -> None:
    mta, sink = relay_env
    for rcpt, _ in [*MATRIX[:3], (f"postmaster@{BOUNCE}", "")]:
        assert _rcpt_reply(mta.submission_port, rcpt).startswith("530"), rcpt
        assert _rcpt_reply(mta.submission_port, rcpt, "--tls").startswith("530 5.7.0"), rcpt
        assert _rcpt_reply(mta.smtps_port, rcpt, "--tls-on-connect").startswith("530 5.7.0"), rcpt
    time.sleep(0.5)
    assert sink.messages() == []
    assert mta.app.spool.queued_ids() == []


@pytest.mark.dns
def test_inbound_port_offers_no_auth(relay_env: tuple[RunningMta, Sink]) -> None:
    mta, _ = relay_env
    r = swaks("--server", f"{MTA_ADDR}:{mta.inbound_port}", "--tls", "--auth", "PLAIN", "--auth-user", "alice",
              "--auth-password", "alice-secret-1", "--from", "a@alpha.test", "--to", "v@example.test")
    assert not r.has("235"), r.transcript
    assert "AUTH" not in "".join(x for x in r.replies() if x.startswith("250"))


local_parts = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30)
domains = st.sampled_from([BOUNCE, BOUNCE.upper(), "example.test", f"x.{BOUNCE}", "[127.0.0.1]", f"{BOUNCE}.evil"])


@settings(max_examples=400, deadline=None)
@given(local=local_parts, domain=domains)
def test_inbound_policy_never_accepts_foreign_or_tricky(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    if check_inbound_rcpt(address, [BOUNCE]) is None:
        accepted_local, _, accepted_domain = address.rpartition("@")
        assert accepted_domain.lower() == BOUNCE
        assert not any(c in accepted_local for c in '%!@"\\')


# ----------------------------------------------------------------------------- relay domains + static routes


def test_relay_domain_is_forwarded_over_its_static_route(tmp_path: Path, tls_files: Any,
                                                         password_hashes: dict[str, str], mta_factory: Any,
                                                         sink_factory: Any) -> None:
    """Port 25 accepts a relay domain without AUTH and forwards it to the route's host and port (no DNS at
    all: the resolver in this config is unreachable), from the relay domain's pool; everything else is
    still refused, so listing a relay domain opens nothing else."""
    sink = sink_factory()
    cfg = base_config(tmp_path, tls_files, password_hashes)
    cfg["listeners"]["inbound"]["relay_domains"] = [{"domain": "internal.test", "pool": "beta"}]
    cfg["delivery"]["routes"] = [{"domain": "internal.test", "host": "127.0.0.42", "port": sink.port}]
    mta = mta_factory(cfg)
    r = swaks("--server", f"{MTA_ADDR}:{mta.inbound_port}", "--ehlo", "partner.test", "--from", "x@partner.test",
              "--to", "user@INTERNAL.test", "--body", "relayed body")
    assert r.has("250 2.0.0 OK queued"), r.transcript
    [m] = sink.wait_messages(1)
    assert m.rcpts == ["user@INTERNAL.test"]
    assert m.mail_from == "x@partner.test"  # relayed mail keeps its sender (no VERP: no tenant sent it)
    assert m.client_addr == "127.0.0.31"  # pool "beta"
    assert b"relayed body" in m.content
    assert b"by mta.test (smtp-infra)" in m.content
    for rcpt, expected in MATRIX:
        assert _rcpt_reply(mta.inbound_port, rcpt).startswith(expected), rcpt
    assert _rcpt_reply(mta.inbound_port, "user@sub.internal.test").startswith("550 5.7.1")
    # one transaction carries one kind: a report address after a relay recipient is deferred to another one
    r = swaks("--server", f"{MTA_ADDR}:{mta.inbound_port}", "--from", "x@partner.test",
              "--to", f"a@internal.test,dsn@{BOUNCE}", "--quit-after", "RCPT")
    assert any(x.startswith("452 4.5.3") for x in r.replies()), r.replies()
    wait_for(lambda: mta.app.spool.queued_ids() == [])


def test_relay_and_route_config_is_validated() -> None:
    base: dict[str, Any] = {
        "hostname": "mta.test", "listeners": {"submission": {"enabled": False},
                                              "inbound": {"domains": ["b.test"], "relay_domains": []}},
        "pools": [{"name": "p", "source_ips": [{"address": "127.0.0.21", "ehlo_name": "o.test"}]}],
    }
    ok = parse_config({**base, "listeners": {**base["listeners"], "inbound": {
        "domains": ["b.test"], "relay_domains": [{"domain": "In.Test.", "pool": "p"}]}},
        "delivery": {"routes": [{"domain": "in.test", "host": "Mail.In.Test", "port": 2525}]}})
    assert ok.relay_domain("in.test") is not None and ok.relay_domain("b.test") is None
    route = ok.route("in.test")
    assert route is not None and (route.host, route.port) == ("mail.in.test", 2525)
    bad = [
        ({"domains": ["b.test"], "relay_domains": [{"domain": "x.test", "pool": "nope"}]}, {}, "not in 'pools'"),
        ({"domains": ["b.test"], "relay_domains": [{"domain": "b.test", "pool": "p"}]}, {}, "pick one"),
        ({"domains": ["b.test"], "relay_domains": [{"domain": "x.test", "pool": "p"}] * 2}, {}, "listed once"),
        ({"domains": ["b.test"]}, {"routes": [{"domain": "x.test", "host": "h.test"}] * 2}, "one route"),
        ({"domains": ["b.test"]}, {"routes": [{"domain": "x.test", "host": "not a host"}]}, "invalid domain"),
    ]
    for inbound, delivery, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_config({**base, "listeners": {**base["listeners"], "inbound": inbound}, "delivery": delivery})
