"""Which pool address each MTA replica sends from: a pure, stable assignment.

Inputs are the pool's addresses, the replicas that want one (server + ordinal, in order of
the servers' creation) and the assignment currently recorded on the pool's status. Existing
assignments are kept while both the address and the replica still exist, so a restart, a
scale-down of another server or a re-ordering never moves an address; free addresses go to
unassigned replicas in address order. An address is never given to two replicas.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class ReplicaKey:
    """One replica of one SmtpServer: namespace/name/ordinal."""

    namespace: str
    server: str
    ordinal: int

    def __str__(self) -> str:
        return f"{self.namespace}/{self.server}/{self.ordinal}"

    @classmethod
    def parse(cls, text: str) -> ReplicaKey | None:
        """The inverse of str(); None for anything else (e.g. a hand-written value)."""
        parts = text.split("/")
        if len(parts) != 3 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]))


@dataclass(frozen=True)
class Assignment:
    """The result: address → replica, plus the replicas left without an address."""

    by_address: dict[str, ReplicaKey]
    unassigned: list[ReplicaKey]

    @functools.cached_property
    def by_replica(self) -> dict[ReplicaKey, str]:
        """replica → address (every server's view of a pool asks once per replica)."""
        return {owner: address for address, owner in self.by_address.items()}

    def address_of(self, replica: ReplicaKey) -> str | None:
        """The address assigned to a replica, if any."""
        return self.by_replica.get(replica)


def expand_addresses(entries: Iterable[str]) -> list[str]:
    """Single IPs and small CIDRs (schema-limited to /24 and /120) as a sorted, unique list."""
    return list(_expanded(tuple(entries)))


@functools.lru_cache(maxsize=256)
def _expanded(entries: tuple[str, ...]) -> tuple[str, ...]:
    """Cached: each reconcile of a server, its pool and the blocklist monitor expands the same
    pool again, and parsing 256 addresses each time was a tenth of the operator's CPU."""
    out: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for entry in entries:
        if "/" in entry:
            network = ipaddress.ip_network(entry, strict=False)
            hosts = network.hosts() if network.num_addresses > 2 else iter(network)
            out.update(ipaddress.ip_address(str(h)) for h in hosts)
        else:
            out.add(ipaddress.ip_address(entry))
    return tuple(str(a) for a in sorted(out, key=lambda a: (a.version, int(a))))


def assign(addresses: list[str], replicas: list[ReplicaKey], current: dict[str, str]) -> Assignment:
    """Keep valid current assignments, hand free addresses to the remaining replicas in order."""
    wanted = set(replicas)
    by_address: dict[str, ReplicaKey] = {}
    taken: set[ReplicaKey] = set()
    for address in addresses:
        owner = ReplicaKey.parse(current.get(address, ""))
        if owner is not None and owner in wanted and owner not in taken:
            by_address[address] = owner
            taken.add(owner)
    free = [a for a in addresses if a not in by_address]
    unassigned: list[ReplicaKey] = []
    for replica in replicas:
        if replica in taken:
            continue
        if free:
            by_address[free.pop(0)] = replica
            taken.add(replica)
        else:
            unassigned.append(replica)
    return Assignment(by_address=by_address, unassigned=unassigned)


def ptr_name(template: str, address: str, index: int, pool: str) -> str:
    """The EHLO / PTR host name of an address from the pool's template."""
    dashed = address.replace(".", "-").replace(":", "-")
    return template.replace("{ip}", dashed).replace("{index}", str(index)).replace("{pool}", pool)
