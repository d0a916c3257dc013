"""The kube-state-metrics custom resource state configuration the chart ships reads fields that
exist in our CRDs' schemas (a misspelt path would silently export nothing)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.observability.promql import KSM_CONFIG, ROOT

pytestmark = pytest.mark.observability

_METADATA = {"name", "namespace", "generation", "labels"}


def crd_schema(kind: str) -> dict[str, Any]:
    for path in (ROOT / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
            return dict(version["schema"]["openAPIV3Schema"])
    raise AssertionError(f"no CRD for {kind}")


def walk(schema: dict[str, Any], path: list[str]) -> dict[str, Any]:
    for step in path:
        if schema.get("type") == "array":
            schema = schema["items"]
        if path[0] == "metadata" and step in _METADATA:
            return {"type": "string"}
        properties = schema.get("properties", {})
        assert step in properties, f"{path}: no field {step!r} (has {sorted(properties)})"
        schema = properties[step]
    return schema


def resources() -> list[dict[str, Any]]:
    return list(yaml.safe_load(KSM_CONFIG.read_text())["spec"]["resources"])


@pytest.mark.parametrize("resource", resources(), ids=lambda r: r["groupVersionKind"]["kind"])
def test_every_path_exists_in_the_crd(resource: dict[str, Any]) -> None:
    schema = crd_schema(resource["groupVersionKind"]["kind"])
    for path in resource.get("labelsFromPath", {}).values():
        walk(schema, path)
    for metric in resource["metrics"]:
        if metric["each"]["type"] == "StateSet":
            state_set = metric["each"]["stateSet"]
            target = walk(schema, state_set["path"])
            assert sorted(state_set["list"]) == sorted(target["enum"]), f"{metric['name']}: states of the enum"
            continue
        gauge = metric["each"]["gauge"]
        target = walk(schema, gauge["path"])
        element = target["items"] if target.get("type") == "array" else target
        for path in gauge.get("labelsFromPath", {}).values():
            walk(element, path)
        if "valueFrom" in gauge:
            value = walk(element, gauge["valueFrom"])
            assert value.get("type") in ("integer", "number", "boolean", "string"), metric["name"]
        else:
            assert target.get("type") in ("integer", "number"), metric["name"]


def test_one_prefix_per_kind() -> None:
    """kube-state-metrics refuses one metric family from two resources: each kind has its own prefix."""
    prefixes = [r["metricNamePrefix"] for r in resources()]
    assert len(prefixes) == len(set(prefixes)) == 5
