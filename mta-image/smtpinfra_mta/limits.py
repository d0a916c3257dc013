"""Connection and memory budgets of the SMTP listeners.

Each listener kind has its own budget of connections, in total and per client address, so idle or
abusive connections on port 25 can never use up the sessions that tenants need on 587/465. DATA bytes
held in memory across all sessions have one ceiling: beyond it a message is refused with a temporary
452 and its bytes are discarded as they arrive, instead of the process growing until it is killed.
No I/O here; the protocol asks and reports back.

With several receiving processes (``listeners.processes``) each process admits its share of a listener's
connections (rounded up), so the replica's total stays the configured figure. The per-address limit is
enforced whole in each process: whichever process takes a connection is up to the kernel, and one
client's connections are not spread evenly, so a split figure refused clients under their limit. A
client can so hold up to ``processes`` times its limit across the replica, within the total.
"""

from __future__ import annotations

from collections import Counter

from smtpinfra_mta.config import ListenerLimits


class ConnectionBudget:
    """Open connections per listener kind and per (listener kind, client address)."""

    def __init__(self, processes: int = 1) -> None:
        self._per_listener: Counter[str] = Counter()
        self._per_ip: Counter[tuple[str, str]] = Counter()
        self.processes = processes

    def _share(self, limit: int) -> int:
        return -(-limit // self.processes)

    def open(self, kind: str, ip: str | None, limits: ListenerLimits) -> str | None:
        """Admit a connection (None) or say why not (a complete 421 reply). ``ip`` None: not checked yet."""
        if self._per_listener[kind] >= self._share(limits.max_connections):
            return "421 4.3.2 Too many connections to this service, try again later"
        if ip is not None and self._per_ip[(kind, ip)] >= limits.max_connections_per_ip:
            return "421 4.7.0 Too many connections from your address, try again later"
        self._per_listener[kind] += 1
        if ip is not None:
            self._per_ip[(kind, ip)] += 1
        return None

    def add_ip(self, kind: str, ip: str, limits: ListenerLimits) -> str | None:
        """Count an address learnt after admission (PROXY protocol); a refusal when it is over its limit."""
        if self._per_ip[(kind, ip)] >= limits.max_connections_per_ip:
            return "421 4.7.0 Too many connections from your address, try again later"
        self._per_ip[(kind, ip)] += 1
        return None

    def close(self, kind: str, ip: str | None) -> None:
        self._per_listener[kind] -= 1
        if self._per_listener[kind] <= 0:
            del self._per_listener[kind]
        if ip is not None:
            self._per_ip[(kind, ip)] -= 1
            if self._per_ip[(kind, ip)] <= 0:
                del self._per_ip[(kind, ip)]

    def count(self, kind: str, ip: str | None = None) -> int:
        return self._per_listener[kind] if ip is None else self._per_ip[(kind, ip)]


class MemoryBudget:
    """Bytes of message data held by all sessions together, with a ceiling."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.used = 0

    def take(self, n: int) -> bool:
        """Account ``n`` more bytes; False (nothing taken) when that would pass the ceiling."""
        if self.used + n > self.ceiling:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(self.used - n, 0)
