"""Tenant quotas: reserve before answering 250, release when the message is not accepted after all.

Checking a counter and moving it after the commit let parallel sessions all pass the same check
(``per_hour=10``, three concurrent 5-recipient messages: three 250s and 15 counted). A reservation is
taken atomically in the counter store before the spool commit and given back if the commit fails or
the message was a duplicate, so concurrent sessions on one replica never exceed the limit.

Across replicas each replica enforces its own share of a quota (``Quotas.per_hour_share`` /
``per_day_share``, rendered by the operator so the shares of all replicas sum exactly to the quota):
the total accepted can never exceed the quota, and a replica whose share is used up answers with a
temporary 452 so the client retries, possibly on another replica.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smtpinfra_mta.config import Tenant
from smtpinfra_mta.counters import Counters, Window


def quota_key(tenant: str) -> str:
    return f"quota:{tenant}"


def caps_of(tenant: Tenant) -> dict[Window, int | None]:
    """The limits this replica enforces: its share of each quota when split, else the quota itself."""
    q = tenant.quotas
    hour = q.per_hour_share if q.per_hour_share is not None else q.per_hour
    day = q.per_day_share if q.per_day_share is not None else q.per_day
    return {"hour": hour, "day": day}


def forbidden(tenant: Tenant) -> str | None:
    """A permanent refusal when the tenant's quota itself is zero (not merely this replica's share)."""
    if tenant.quotas.per_day == 0 or tenant.quotas.per_hour == 0:
        return "550 5.7.1 This account may not send mail (quota is zero)"
    return None


def over_quota_reply(tenant: Tenant, window: Window) -> str:
    """Temporary (RFC 3463 X.7.1 with a 4xx code): the client retries later or on another replica."""
    q = tenant.quotas
    if window == "day":
        if q.per_day_share is not None:
            return (f"452 4.7.1 This server's share of the daily quota of {q.per_day} is used up; "
                    "try again later (another server may accept)")
        return f"452 4.7.1 Daily sending quota of {q.per_day} reached; try again tomorrow"
    if q.per_hour_share is not None:
        return (f"452 4.7.1 This server's share of the hourly quota of {q.per_hour} is used up; "
                "try again later (another server may accept)")
    return f"452 4.7.1 Hourly sending quota of {q.per_hour} reached; try again later"


@dataclass
class Reservation:
    """Recipients counted ahead of a spool commit; ``keep()`` after it, ``release()`` when it failed."""

    counters: Counters
    key: str
    n: int
    windows: dict[Window, str] = field(default_factory=dict)
    _done: bool = False

    def keep(self) -> None:
        self._done = True

    def release(self) -> None:
        if not self._done:
            self._done = True
            self.counters.release(self.key, self.n, self.windows)


def reserve(counters: Counters, tenant: Tenant, n: int) -> tuple[str | None, Reservation | None]:
    """(refusal, None) when ``n`` more recipients do not fit, else (None, the reservation)."""
    refusal = forbidden(tenant)
    if refusal is not None:
        return refusal, None
    key = quota_key(tenant.name)
    over, windows = counters.reserve(key, n, caps_of(tenant))
    if over is not None:
        return over_quota_reply(tenant, over), None
    return None, Reservation(counters, key, n, windows)


def early_refusal(counters: Counters, tenant: Tenant, n: int) -> str | None:
    """At RCPT time: a refusal when ``n`` recipients would not fit now (no reservation; DATA reserves)."""
    refusal = forbidden(tenant)
    if refusal is not None:
        return refusal
    key = quota_key(tenant.name)
    for window, cap in caps_of(tenant).items():
        if cap is not None and counters.get(key, window) + n > cap:
            return over_quota_reply(tenant, window)
    return None
