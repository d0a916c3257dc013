"""Kinds this operator version accepts but does not reconcile yet: Campaign.

They still get honest status: observedGeneration and Ready=Unknown with reason Pending, so
`kubectl get` and kstatus show that nothing has been done for them (InProgress), not a
fake Ready.
"""

from __future__ import annotations

from typing import Any

import kopf

from smtpinfra_api.meta import API_VERSION, GROUP, VERSION
from smtpinfra_api.v1alpha1 import Campaign, Kind

from .. import kube
from ..conditions import pending
from ..kicker import Kicker
from ..statuswriter import publish

PENDING_KINDS: list[type[Kind]] = [Campaign]


PendingKey = tuple[str, str, str]
"""(kind, namespace, name)."""


async def observe_pending(key: PendingKey) -> None:
    """Publish the Pending status of one object of a kind not reconciled yet."""
    kind_name, namespace, name = key
    kind = next(k for k in PENDING_KINDS if k.kind == kind_name)
    body = await kube.get(API_VERSION, kind.kind, name, namespace or None)
    if body is not None and not body["metadata"].get("deletionTimestamp"):
        message = f"Accepted; this operator version does not reconcile {kind.kind} objects yet"
        await publish(kind, body, pending(message))


pending_kicker: Kicker[PendingKey] = Kicker(observe_pending)


def _register(kind: type[Kind]) -> None:
    async def observe(name: str, namespace: str | None, **_: Any) -> None:
        pending_kicker.kick((kind.kind, namespace or "", name), delay=0.0)

    observe.__name__ = observe.__qualname__ = f"observe_{kind.singular()}"
    kopf.on.resume(GROUP, VERSION, kind.plural, id=f"observe-{kind.singular()}")(observe)
    kopf.on.create(GROUP, VERSION, kind.plural, id=f"observe-{kind.singular()}")(observe)
    kopf.on.update(GROUP, VERSION, kind.plural, field="spec", id=f"observe-{kind.singular()}")(observe)


for _kind in PENDING_KINDS:
    _register(_kind)
