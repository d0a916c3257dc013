"""Argo CD health checks (argocd/resource_customizations/smtpinfra.com/<Kind>/) in a Lua 5.1 runtime.

Every case of each kind's health_test.yaml runs its health.lua on the testdata object and must
give exactly the status and message listed, as Argo CD's own resource_customizations tests do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.argo import CUSTOMIZATIONS, KINDS, health

pytestmark = pytest.mark.observability


def cases() -> list[Any]:
    found = []
    for kind in KINDS:
        spec = yaml.safe_load((CUSTOMIZATIONS / kind / "health_test.yaml").read_text())
        for case in spec["tests"]:
            found.append(pytest.param(kind, case, id=f"{kind}-{Path(case['inputPath']).stem}"))
    return found


@pytest.mark.parametrize(("kind", "case"), cases())
def test_health_check_gives_the_expected_verdict(kind: str, case: dict[str, Any], tmp_path: Path) -> None:
    obj = yaml.safe_load((CUSTOMIZATIONS / kind / case["inputPath"]).read_text())
    expected = case["healthStatus"]
    assert health(kind, obj, tmp_path) == (expected["status"], expected["message"])


@pytest.mark.parametrize("kind", KINDS)
def test_every_testdata_file_is_a_case_and_every_verdict_is_covered(kind: str) -> None:
    spec = yaml.safe_load((CUSTOMIZATIONS / kind / "health_test.yaml").read_text())
    inputs = {case["inputPath"] for case in spec["tests"]}
    files = {f"testdata/{p.name}" for p in (CUSTOMIZATIONS / kind / "testdata").glob("*.yaml")}
    assert inputs == files
    statuses = {case["healthStatus"]["status"] for case in spec["tests"]}
    wanted = {"Healthy", "Progressing", "Degraded"} | ({"Suspended"} if kind == "Campaign" else set())
    assert statuses == wanted


def test_the_kinds_without_suspension_share_one_script() -> None:
    """One rule set for all kinds; only Campaign adds its suspension, so the copies cannot drift apart."""
    scripts = {kind: (CUSTOMIZATIONS / kind / "health.lua").read_text() for kind in KINDS}
    assert len({scripts[k] for k in KINDS if k != "Campaign"}) == 1
    assert "spec.suspend" in scripts["Campaign"]


def test_gate_on_observed_generation_comes_before_any_condition(tmp_path: Path) -> None:
    """A Ready=True left over from the previous generation must not make an edited object Healthy."""
    obj = yaml.safe_load((CUSTOMIZATIONS / "WarmupPlan" / "testdata" / "healthy.yaml").read_text())
    assert health("WarmupPlan", obj, tmp_path)[0] == "Healthy"
    obj["metadata"]["generation"] = obj["status"]["observedGeneration"] + 1
    assert health("WarmupPlan", obj, tmp_path)[0] == "Progressing"
