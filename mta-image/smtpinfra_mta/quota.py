"""Tenant quotas: reserve before answering 250, release when the message is not accepted after all.

Checking a counter and moving it after the commit let parallel sessions all pass the same check
(``per_hour=10``, three concurrent 5-recipient messages: three 250s and 15 counted). A reservation is
taken atomically in the counter store before the spool commit and given back if the commit fails or
the message was a duplicate, so concurrent sessions on one replica never exceed the limit.

Across replicas each replica enforces its own share of a quota (``Quotas.per_hour_share`` /
``per_day_share``, rendered by the operator so the shares of all replicas sum exactly to the quota):
the total accepted can never exceed the quota, and a replica whose share is used up answers with a
temporary 452 so the client retries, possibly on another replica. With ``quota_store.url`` set, the
replicas share exact counters in PostgreSQL instead (:mod:`smtpinfra_mta.quota_pg`) and shares are
ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from smtpinfra_mta.config import Tenant
from smtpinfra_mta.counters import Counters, Window
from smtpinfra_mta.quota_pg import PostgresQuotas, QuotaStoreError

log = logging.getLogger(__name__)


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


def over_quota_reply(tenant: Tenant, window: Window, *, shared: bool = False) -> str:
    """Temporary (RFC 3463 X.7.1 with a 4xx code): the client retries later or on another replica."""
    q = tenant.quotas
    if window == "day":
        if q.per_day_share is not None and not shared:
            return (f"452 4.7.1 This server's share of the daily quota of {q.per_day} is used up; "
                    "try again later (another server may accept)")
        return f"452 4.7.1 Daily sending quota of {q.per_day} reached; try again tomorrow"
    if q.per_hour_share is not None and not shared:
        return (f"452 4.7.1 This server's share of the hourly quota of {q.per_hour} is used up; "
                "try again later (another server may accept)")
    return f"452 4.7.1 Hourly sending quota of {q.per_hour} reached; try again later"


@dataclass
class Reservation:
    """Recipients counted ahead of a spool commit; ``keep()`` after it, ``release()`` when it failed.

    ``local`` is this replica's own counter file, which ``/stats`` reports (the operator sums replicas);
    with a ``shared`` store the reservation lives there and the local count follows on ``keep()``.
    """

    local: Counters
    key: str
    n: int
    windows: dict[Window, str] = field(default_factory=dict)
    shared: PostgresQuotas | None = None
    _done: bool = False

    def keep(self) -> None:
        if self._done:
            return
        self._done = True
        if self.shared is not None:
            self.local.add(self.key, self.n)

    async def release(self) -> None:
        if self._done:
            return
        self._done = True
        if self.shared is None:
            self.local.release(self.key, self.n, self.windows)
            return
        try:
            await self.shared.release(self.key, self.n, self.windows)
        except QuotaStoreError as exc:  # the count stays high: errs on the side of the quota
            log.error("quota reservation not released", extra={"key": self.key, "error": str(exc)})


async def reserve(counters: Counters, tenant: Tenant, n: int,
                  shared: PostgresQuotas | None = None) -> tuple[str | None, Reservation | None]:
    """(refusal, None) when ``n`` more recipients do not fit, else (None, the reservation).

    With a shared store the whole quota is checked there (one authority for all replicas; shares are
    not needed); when it cannot be reached the answer is a temporary 451, never an uncounted 250.
    """
    refusal = forbidden(tenant)
    if refusal is not None:
        return refusal, None
    key = quota_key(tenant.name)
    if shared is not None:
        try:
            over, windows = await shared.reserve(key, n, {"hour": tenant.quotas.per_hour,
                                                          "day": tenant.quotas.per_day})
        except QuotaStoreError as exc:
            log.error("quota store unavailable", extra={"tenant": tenant.name, "error": str(exc)})
            return "451 4.3.0 Temporary local problem (quota store), please retry", None
        if over is not None:
            return over_quota_reply(tenant, over, shared=True), None
        return None, Reservation(counters, key, n, windows, shared)
    over, windows = counters.reserve(key, n, caps_of(tenant))
    if over is not None:
        return over_quota_reply(tenant, over), None
    return None, Reservation(counters, key, n, windows)


def early_refusal(counters: Counters, tenant: Tenant, n: int, *, shared: bool = False) -> str | None:
    """At RCPT time: a refusal when ``n`` recipients would not fit now (no reservation; DATA reserves).

    With a shared store only the local figures are at hand, so only a zero quota is refused here.
    """
    refusal = forbidden(tenant)
    if refusal is not None or shared:
        return refusal
    key = quota_key(tenant.name)
    for window, cap in caps_of(tenant).items():
        if cap is not None and counters.get(key, window) + n > cap:
            return over_quota_reply(tenant, window)
    return None
