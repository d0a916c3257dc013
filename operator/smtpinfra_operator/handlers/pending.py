"""Kinds this operator version accepts but does not reconcile yet: Campaign.

They still get honest status: observedGeneration and Ready=Unknown with reason Pending, so
`kubectl get` and kstatus show that nothing has been done for them (InProgress), not a
fake Ready.
"""

from __future__ import annotations

from typing import Any

import kopf

from smtpinfra_api.meta import GROUP, VERSION
from smtpinfra_api.v1alpha1 import Campaign, Kind

from ..conditions import pending
from ..statuswriter import publish

PENDING_KINDS: list[type[Kind]] = [Campaign]


def _register(kind: type[Kind]) -> None:
    message = f"Accepted; this operator version does not reconcile {kind.kind} objects yet"

    async def observe(body: kopf.Body, **_: Any) -> None:
        await publish(kind, body, pending(message))

    observe.__name__ = observe.__qualname__ = f"observe_{kind.singular()}"
    kopf.on.resume(GROUP, VERSION, kind.plural, id=f"observe-{kind.singular()}")(observe)
    kopf.on.create(GROUP, VERSION, kind.plural, id=f"observe-{kind.singular()}")(observe)
    kopf.on.update(GROUP, VERSION, kind.plural, field="spec", id=f"observe-{kind.singular()}")(observe)


for _kind in PENDING_KINDS:
    _register(_kind)
