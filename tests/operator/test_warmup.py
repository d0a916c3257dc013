"""WarmupPlan checks the schema cannot express, and the schedule summary (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from smtpinfra_api.v1alpha1 import WarmupPlanSpec
from smtpinfra_operator import warmup
from smtpinfra_operator.conditions import FALSE, TRUE

pytestmark = pytest.mark.operator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def spec(**fields) -> WarmupPlanSpec:
    return WarmupPlanSpec.model_validate(fields)


def reasons(s: WarmupPlanSpec) -> list[str]:
    return [p.reason for p in warmup.check(s)]


def test_explicit_schedule_summary():
    s = spec(stages=[{"day": 1, "dailyCap": 100}, {"day": 3, "dailyCap": 500}, {"day": 7, "dailyCap": 2000}])
    assert warmup.daily_caps(s) == [100, 100, 500, 500, 500, 500, 2000]
    out = warmup.outcome(s)
    assert out.ready == TRUE
    assert out.fields == {"daysToFullVolume": 7, "finalDailyCap": 2000, "stageCount": 3}


def test_geometric_schedule_summary():
    s = spec(geometric={"initialDailyCap": 100, "growthFactor": "2", "targetDailyCap": 1000, "maxDays": 30})
    assert warmup.daily_caps(s) == [100, 200, 400, 800, 1000]
    assert warmup.outcome(s).fields["daysToFullVolume"] == 5


def test_examples_are_valid_plans():
    paths = sorted(EXAMPLES.glob("warmupplan-*.yaml"))
    assert [p.name for p in paths] == ["warmupplan-geometric.yaml", "warmupplan-standard.yaml"]
    for path in paths:
        doc = yaml.safe_load(path.read_text())
        out = warmup.outcome(WarmupPlanSpec.model_validate(doc["spec"]))
        assert out.ready == TRUE, (path, out.message)


@pytest.mark.parametrize(
    ("fields", "reason", "fragment"),
    [
        ({"stages": [{"day": 1, "dailyCap": 100}, {"day": 1, "dailyCap": 200}]},
         "StagesNotIncreasing", "spec.stages[1].day (1) must be greater than spec.stages[0].day (1)"),
        ({"stages": [{"day": 1, "dailyCap": 100}, {"day": 2, "dailyCap": 100}]},
         "CapsNotIncreasing", "spec.stages[1].dailyCap (100)"),
        ({"stages": [{"day": 2, "dailyCap": 100}]}, "FirstStageNotDayOne", "spec.stages[0].day is 2"),
        ({"stages": [{"day": 1, "dailyCap": 100, "hourlyCap": 101}]}, "HourlyCapAboveDailyCap", "hourlyCap (101)"),
        ({"stages": [{"day": 1, "dailyCap": 100, "providerCaps": [{"provider": "gmail", "dailyCap": 150}]}]},
         "ProviderCapAboveTotal", "spec.stages[0].providerCaps[gmail].dailyCap (150)"),
        ({"stages": [{"day": 1, "dailyCap": 100}], "providerCaps": [{"provider": "yahoo", "dailyCap": 101}]},
         "ProviderCapAboveTotal", "spec.providerCaps[yahoo].dailyCap (101) exceeds the final daily cap"),
        ({"geometric": {"initialDailyCap": 100, "growthFactor": "1", "targetDailyCap": 1000}},
         "GrowthFactorTooSmall", "growthFactor (1)"),
        ({"geometric": {"initialDailyCap": 100, "growthFactor": "1.1", "targetDailyCap": 100000, "maxDays": 10}},
         "CeilingNotReached", "reaches only 236/day after maxDays=10 days"),
    ],
)
def test_invalid_plans_name_the_problem(fields, reason, fragment):
    s = spec(**fields)
    assert reason in reasons(s)
    out = warmup.outcome(s)
    assert out.ready == FALSE
    assert out.stalled
    assert fragment in out.message


def test_ceiling_message_suggests_a_factor_that_works():
    s = spec(geometric={"initialDailyCap": 100, "growthFactor": "1.1", "targetDailyCap": 100000, "maxDays": 10})
    suggested = warmup.check(s)[0].message.split("at least ")[1].split(" ")[0]
    fixed = spec(geometric={"initialDailyCap": 100, "growthFactor": suggested, "targetDailyCap": 100000,
                            "maxDays": 10})
    assert warmup.check(fixed) == []
