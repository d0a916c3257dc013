"""The config builder maps spec.limits into the MTA config and splits quotas between replicas."""

from __future__ import annotations

import pytest

from smtpinfra_api.v1alpha1 import SmtpServerSpec, TenantSpec
from smtpinfra_operator.builders.mtaconfig import (
    ServedTenant,
    ServerInputs,
    SourceAddress,
    quota_share,
    replica_config,
)


def _spec(**extra: object) -> SmtpServerSpec:
    return SmtpServerSpec.model_validate({
        "hostname": "mta.example.test", "ipPools": ["p"], "returnPathDomain": "bounces.example.test",
        "tls": {"secretName": "tls"}, **extra,
    })


def _inputs(spec: SmtpServerSpec, replicas: int) -> ServerInputs:
    tenant = ServedTenant("acme", TenantSpec.model_validate({
        "displayName": "Acme", "senderDomains": ["acme.example.test"], "quotas": {"perHour": 10, "perDay": 100}}), "p")
    addresses = {o: [SourceAddress("p", f"127.0.1.{o + 1}", f"out{o}.example.test")] for o in range(replicas)}
    return ServerInputs("mta", "mail", spec, [tenant], addresses)


@pytest.mark.parametrize("quota, replicas", [(10, 3), (1, 3), (0, 2), (7, 7), (100, 1), (5, 100)])
def test_shares_sum_exactly_to_the_quota(quota: int, replicas: int) -> None:
    shares = [quota_share(quota, replicas, o) for o in range(replicas)]
    if replicas == 1:
        assert shares == [None]  # one replica enforces the quota whole
    else:
        assert sum(s or 0 for s in shares) == quota and max(s or 0 for s in shares) - min(s or 0 for s in shares) <= 1


def test_each_replica_config_carries_its_share() -> None:
    spec = _spec(replicas=3)
    inputs = _inputs(spec, 3)
    quotas = [replica_config(inputs, o).tenants[0].quotas for o in range(3)]
    assert [q.per_hour_share for q in quotas] == [4, 3, 3]
    assert [q.per_day_share for q in quotas] == [34, 33, 33]
    assert {(q.per_hour, q.per_day) for q in quotas} == {(10, 100)}


def test_spec_limits_reach_the_mta_config() -> None:
    spec = _spec(limits={"inbound": {"maxConnections": 40, "maxConnectionsPerIp": 3, "idleTimeout": "1m",
                                     "sessionTimeLimit": "5m"},
                         "submission": {"maxConnectionsPerIp": 200}, "maxDataMemory": 64 * 1024 * 1024})
    lim = replica_config(_inputs(spec, 1), 0).limits
    assert (lim.inbound.max_connections, lim.inbound.max_connections_per_ip) == (40, 3)
    assert (lim.inbound.idle_timeout, lim.inbound.session_time_limit) == (60.0, 300.0)
    assert lim.submission.max_connections_per_ip == 200 and lim.submission.max_connections == 1000
    assert lim.max_data_memory == 64 * 1024 * 1024
    defaults = replica_config(_inputs(_spec(), 1), 0).limits
    assert (defaults.inbound.max_connections, defaults.submission.max_connections_per_ip) == (500, 50)


def test_spec_limits_ranges_are_enforced_by_the_model() -> None:
    with pytest.raises(ValueError, match=r"max_connections_per_ip|maxConnectionsPerIp"):
        _spec(limits={"inbound": {"maxConnectionsPerIp": 0}})


@pytest.mark.parametrize("resources, processes", [
    ({}, 1),  # no request: one receiving process beside the delivery process
    ({"requests": {"cpu": "500m"}}, 1),
    ({"requests": {"cpu": "2"}}, 1),
    ({"requests": {"cpu": "2500m"}}, 2),
    ({"requests": {"cpu": "4"}}, 3),
    ({"limits": {"cpu": "3"}}, 2),  # a limit alone is the request too (Kubernetes defaults it so)
    ({"requests": {"cpu": "1"}, "limits": {"cpu": "8"}}, 1),  # sized by what is guaranteed
    ({"requests": {"cpu": "64"}}, 16),
])
def test_receiving_processes_follow_the_cpu_request(resources: dict[str, object], processes: int) -> None:
    cfg = replica_config(_inputs(_spec(resources=resources), 1), 0)
    assert cfg.listeners.processes == processes
    assert cfg.delivery.separate_process
