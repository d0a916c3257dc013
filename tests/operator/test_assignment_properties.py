"""Properties of the address assignment over any sequence of servers added, scaled and removed.

The pool's status is the only memory of the assignment (`assign` gets the previous one back from
it), so "stable across restarts" means: feeding the recorded assignment back in changes nothing,
and a replica keeps its address for as long as both exist, whatever happens to other servers.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from smtpinfra_operator.builders.assignment import Assignment, ReplicaKey, assign

ADDRESSES = [f"127.0.40.{i}" for i in range(1, 9)]
SERVERS = ["a", "b", "c", "d", "e"]

# One step: a server (by name) set to a replica count; 0 removes it.
steps = st.lists(st.tuples(st.sampled_from(SERVERS), st.integers(min_value=0, max_value=4)), min_size=1,
                 max_size=25)
pools = st.integers(min_value=0, max_value=len(ADDRESSES)).map(lambda n: ADDRESSES[:n])


def replicas_of(servers: dict[str, int]) -> list[ReplicaKey]:
    """Every replica in the servers' creation order (insertion order of the dict), as the pool lists them."""
    return [ReplicaKey("mail", name, i) for name, count in servers.items() for i in range(count)]


def recorded(assignment: Assignment) -> dict[str, str]:
    """What the pool's status records (`assignedTo` per address)."""
    return {address: str(owner) for address, owner in assignment.by_address.items()}


def run(addresses: list[str], sequence: list[tuple[str, int]]):
    """Apply the steps one after another, each starting from the previous recorded assignment."""
    servers: dict[str, int] = {}
    current: dict[str, str] = {}
    history = []
    for name, count in sequence:
        if count == 0:
            servers.pop(name, None)
        else:
            servers[name] = count
        result = assign(addresses, replicas_of(servers), current)
        history.append((dict(servers), current, result))
        current = recorded(result)
    return history


@settings(max_examples=300, deadline=None)
@given(pools, steps)
def test_never_one_address_on_two_replicas_and_every_replica_accounted_for(addresses, sequence):
    for servers, _, result in run(addresses, sequence):
        owners = list(result.by_address.values())
        assert len(owners) == len(set(owners)), "a replica holds two addresses"
        assert set(result.by_address) <= set(addresses)
        wanted = replicas_of(servers)
        assert set(owners) | set(result.unassigned) == set(wanted)
        assert not set(owners) & set(result.unassigned)
        # Nobody waits for an address while one is free.
        assert not result.unassigned or len(result.by_address) == len(addresses)


@settings(max_examples=300, deadline=None)
@given(pools, steps)
def test_a_replica_keeps_its_address_while_both_exist(addresses, sequence):
    """Scale-up, scale-down and other servers coming and going never move an address."""
    for servers, previous, result in run(addresses, sequence):
        still_wanted = set(replicas_of(servers))
        for address, before in previous.items():
            key = ReplicaKey.parse(before)
            if key in still_wanted and address in addresses:
                assert result.by_address.get(address) == key, f"{address} moved away from {key}"


@settings(max_examples=300, deadline=None)
@given(pools, steps)
def test_a_restart_that_reads_the_recorded_assignment_back_changes_nothing(addresses, sequence):
    for servers, _, result in run(addresses, sequence):
        again = assign(addresses, replicas_of(servers), recorded(result))
        assert again == result


@settings(max_examples=200, deadline=None)
@given(pools, st.dictionaries(st.sampled_from(SERVERS), st.integers(min_value=1, max_value=4), min_size=1))
def test_the_same_inputs_give_the_same_assignment(addresses, servers):
    """A server's reconcile and the pool's derive the assignment separately; they must agree."""
    replicas = replicas_of(servers)
    assert assign(addresses, replicas, {}) == assign(list(addresses), list(replicas), {})
