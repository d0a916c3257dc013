"""Kinds this operator version accepts but does not reconcile yet: Campaign.

They still get honest status: observedGeneration and Ready=Unknown with reason Pending, so
`kubectl get` and kstatus show that nothing has been done for them (InProgress), not a
fake Ready.
"""

from __future__ import annotations

from smtpinfra_api.meta import API_VERSION
from smtpinfra_api.v1alpha1 import Campaign, Kind

from ..conditions import pending
from ..controller import Controller

PENDING_KINDS: list[type[Kind]] = [Campaign]

PendingKey = tuple[str, str, str]
"""(kind, namespace, name)."""


class PendingController(Controller[PendingKey]):
    """One queue for every kind not reconciled yet."""

    kind = "Pending"

    async def reconcile(self, key: PendingKey) -> None:
        """Publish the Pending status of one object of a kind not reconciled yet."""
        kind_name, namespace, name = key
        kind = next(k for k in PENDING_KINDS if k.kind == kind_name)
        body = await self.kube.get(API_VERSION, kind.kind, name, namespace or None)
        if body is not None and not body["metadata"].get("deletionTimestamp"):
            message = f"Accepted; this operator version does not reconcile {kind.kind} objects yet"
            await self.deps.status.publish(kind, body, pending(message))
