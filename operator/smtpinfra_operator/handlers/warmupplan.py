"""WarmupPlan: validate the schedule and publish its summary on status."""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from smtpinfra_api.meta import GROUP, VERSION
from smtpinfra_api.v1alpha1 import WarmupPlan, WarmupPlanSpec

from .. import warmup
from ..conditions import FALSE, Outcome
from ..settings import RESYNC_SECONDS
from ..statuswriter import publish


def plan_outcome(spec: dict[str, Any]) -> Outcome:
    """The outcome for a spec as stored by the API server (camelCase dict)."""
    try:
        model = WarmupPlanSpec.model_validate(spec)
    except ValidationError as error:
        return Outcome(ready=FALSE, reason="InvalidSpec", message=str(error), stalled=True)
    return warmup.outcome(model)


@kopf.on.resume(GROUP, VERSION, WarmupPlan.plural)
@kopf.on.create(GROUP, VERSION, WarmupPlan.plural)
@kopf.on.update(GROUP, VERSION, WarmupPlan.plural, field="spec")
async def reconcile(body: kopf.Body, spec: kopf.Spec, **_: Any) -> None:
    """Reconcile on every spec change (and on operator start)."""
    await publish(WarmupPlan, body, plan_outcome(dict(spec)))


@kopf.timer(GROUP, VERSION, WarmupPlan.plural, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def resync(body: kopf.Body, spec: kopf.Spec, **_: Any) -> None:
    """Level-based: re-derive the status periodically; writes only when it differs."""
    await publish(WarmupPlan, body, plan_outcome(dict(spec)))
