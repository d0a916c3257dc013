"""What the SMTP listeners need of the running MTA, as a Protocol.

:mod:`smtpinfra_mta.server` is given an object with this shape (the :class:`~smtpinfra_mta.app.MtaApp`)
instead of importing the app module, which itself imports the listeners: the dependency runs one way,
and the handler's needs are listed in one place.
"""

from __future__ import annotations

from typing import Protocol

from smtpinfra_mta.config import MtaConfig, Tenant
from smtpinfra_mta.headers import HeaderLimits
from smtpinfra_mta.limits import ConnectionBudget, MemoryBudget
from smtpinfra_mta.metrics import Metrics
from smtpinfra_mta.quota import Reservation
from smtpinfra_mta.spool import Spool
from smtpinfra_mta.tenants import TenantDirectory


class SmtpApp(Protocol):
    """The MTA state and services an SMTP session uses."""

    cfg: MtaConfig
    metrics: Metrics
    tenants: TenantDirectory
    spool: Spool
    connections: ConnectionBudget
    data_memory: MemoryBudget
    draining: bool
    sessions: int

    @property
    def header_limits(self) -> HeaderLimits: ...

    def session_opened(self) -> None: ...

    def session_closed(self) -> None: ...

    def quota_refusal(self, tenant: Tenant, n: int) -> str | None: ...

    async def reserve_quota(self, tenant: Tenant, n: int) -> tuple[str | None, Reservation | None]: ...

    async def sign(self, content: bytes, from_domain: str) -> bytes: ...
