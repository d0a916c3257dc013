"""WarmupPlan: validate the schedule and publish its summary on status."""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from smtpinfra_api.meta import API_VERSION, GROUP, VERSION
from smtpinfra_api.v1alpha1 import WarmupPlan, WarmupPlanSpec

from .. import kube, warmup
from ..conditions import FALSE, Outcome
from ..kicker import Kicker
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
async def reconcile(name: str, **_: Any) -> None:
    """A spec change (or the operator's start): a key on the plan's queue."""
    plan_kicker.kick(name, delay=0.0)


async def reconcile_plan(name: str) -> None:
    """Derive one plan's status from a fresh read (every event source and the resync end here)."""
    body = await kube.get(API_VERSION, "WarmupPlan", name)
    if body is not None and not body["metadata"].get("deletionTimestamp"):
        await publish(WarmupPlan, body, plan_outcome(body.get("spec") or {}))


plan_kicker: Kicker[str] = Kicker(reconcile_plan)
