"""The provider interface, its errors, and `sync`: read, plan, apply.

The interface is synchronous on purpose: a reconcile does one read and one write per zone, and
dnspython's blocking calls are simplest to reason about. Kopf handlers (async) call `sync` via
`await asyncio.to_thread(sync, provider, owner, records)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from .ownership import Plan, plan_changes
from .records import Record, zone_of


class DnsProviderError(Exception):
    """Publishing failed; the message says what and where, ready for a condition or Event."""


class DnsUnavailable(DnsProviderError):
    """The DNS server could not be reached (refused, timed out): retry later."""


class DnsRejected(DnsProviderError):
    """The server answered but refused: TSIG key, ACL, wrong zone. Needs the user's attention."""


class DnsConcurrentChange(DnsProviderError):
    """A prerequisite failed: someone changed a record set between our read and our write."""


class DnsProvider(Protocol):
    """Where records live. `read` returns every record set in `zones`, foreign ones included."""

    @property
    def zones(self) -> tuple[str, ...]: ...

    def read(self) -> list[Record]: ...

    def apply(self, plan: Plan) -> None: ...


@dataclass(frozen=True)
class SyncResult:
    """The plan that was applied, and desired records outside the provider's zones."""

    plan: Plan
    outside: list[Record] = field(default_factory=list)
    applied: bool = False


def sync(provider: DnsProvider, owner: str, desired: Iterable[Record], *, dry_run: bool = False) -> SyncResult:
    """Make `owner`'s records in the provider's zones equal `desired`; report conflicts.

    Level-based: it reads the current state every time, so it also repairs drift (a record we
    own that someone edited is put back). `desired=[]` removes everything `owner` owns.
    """
    desired = list(desired)
    inside = [r for r in desired if zone_of(r.name, provider.zones) is not None]
    outside = [r for r in desired if zone_of(r.name, provider.zones) is None]
    plan = plan_changes(owner, inside, provider.read())
    applied = False
    if plan.has_changes and not dry_run:
        provider.apply(plan)
        applied = True
    return SyncResult(plan, outside, applied)


def remove_owned(provider: DnsProvider, owner: str) -> SyncResult:
    """Delete every record set `owner` owns (SmtpServer deletion); foreign records stay."""
    return sync(provider, owner, [])
