"""WarmupPlan: validate the schedule and publish its summary on status."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from smtpinfra_api.meta import API_VERSION
from smtpinfra_api.v1alpha1 import WarmupPlan, WarmupPlanSpec

from .. import warmup
from ..conditions import FALSE, Outcome
from ..controller import Controller


def plan_outcome(spec: dict[str, Any]) -> Outcome:
    """The outcome for a spec as stored by the API server (camelCase dict)."""
    try:
        model = WarmupPlanSpec.model_validate(spec)
    except ValidationError as error:
        return Outcome(ready=FALSE, reason="InvalidSpec", message=str(error), stalled=True)
    return warmup.outcome(model)


class WarmupPlanController(Controller[str]):
    """Keys are plan names; the pools that follow a plan hear of it through their own queue."""

    kind = "WarmupPlan"

    async def reconcile(self, key: str) -> None:
        """Derive one plan's status from a fresh read (every event source and the resync end here).

        Fresh, not from the informer: the informer does not keep a plan's status, which `publish`
        compares with (plans are few, and change rarely).
        """
        body = await self.kube.get(API_VERSION, "WarmupPlan", key)
        if body is not None and not body["metadata"].get("deletionTimestamp"):
            await self.deps.status.publish(WarmupPlan, body, plan_outcome(body.get("spec") or {}))
