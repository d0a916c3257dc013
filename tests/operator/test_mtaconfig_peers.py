"""Each replica's config names its peers per pool: the replicas whose address of the pool may send."""

from __future__ import annotations

from smtpinfra_api.v1alpha1 import SmtpServerSpec, TenantSpec
from smtpinfra_operator.builders.mtaconfig import (
    DELIVERY_HTTP_PORT,
    HANDOFF_TOKEN_FILE,
    ServedTenant,
    ServerInputs,
    SourceAddress,
    peer_host,
    replica_config,
)


def _inputs(addresses: dict[int, list[SourceAddress]]) -> ServerInputs:
    spec = SmtpServerSpec.model_validate({
        "hostname": "mta.example.test", "ipPools": ["p", "q"], "returnPathDomain": "bounces.example.test",
        "tls": {"secretName": "tls"}, "replicas": len(addresses)})
    tenant = ServedTenant("acme", TenantSpec.model_validate({"displayName": "Acme",
                                                             "senderDomains": ["acme.example.test"]}), "p")
    return ServerInputs("out", "mail", spec, [tenant], addresses)


def test_peers_are_the_other_replicas_with_a_sendable_address_of_the_pool() -> None:
    inputs = _inputs({
        0: [SourceAddress("p", "127.0.1.1", "a.example.test", daily_cap=50, move_when_blocked=False),
            SourceAddress("q", "127.0.2.1", "d.example.test")],
        1: [SourceAddress("p", "127.0.1.2", "b.example.test"),
            SourceAddress("q", "127.0.2.2", "e.example.test", quarantined=True)],
        2: [SourceAddress("p", "127.0.1.3", "c.example.test", paused=True),
            SourceAddress("q", "127.0.2.3", "f.example.test", daily_cap=10)],
    })
    pools = {p.name: p for p in replica_config(inputs, 0).pools}
    assert [(x.host, x.port, x.warm) for x in pools["p"].peers] == [
        ("out-1.out-pods.mail.svc", DELIVERY_HTTP_PORT, True)]
    assert [(x.host, x.warm) for x in pools["q"].peers] == [("out-2.out-pods.mail.svc", False)]  # 1's is quarantined
    assert pools["p"].move_when_blocked is False and pools["q"].move_when_blocked is True
    third = {p.name: p for p in replica_config(inputs, 2).pools}
    assert [x.host for x in third["p"].peers] == [peer_host("out", "mail", 0), peer_host("out", "mail", 1)]
    assert str(replica_config(inputs, 1).http.handoff_token_file) == str(HANDOFF_TOKEN_FILE)


def test_a_single_replica_has_no_peers() -> None:
    config = replica_config(_inputs({0: [SourceAddress("p", "127.0.1.1", "a.example.test")]}), 0)
    assert [p.peers for p in config.pools] == [[]]
