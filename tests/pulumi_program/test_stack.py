"""The Pulumi program, run under Pulumi's runtime mocks (no CLI, no cluster)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pulumi
import pytest

pytestmark = pytest.mark.pulumi

ROOT = Path(__file__).resolve().parents[2]


class Recorder(pulumi.runtime.Mocks):
    """Records every resource the program registers and echoes its inputs as outputs."""

    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        return {}, None


_spec = importlib.util.spec_from_file_location("smtpinfra_pulumi_stack", ROOT / "pulumi" / "stack.py")
assert _spec and _spec.loader
stack_module = importlib.util.module_from_spec(_spec)
sys.modules["smtpinfra_pulumi_stack"] = stack_module
_spec.loader.exec_module(stack_module)


def test_stack_declares_crds_operator_and_examples():
    # A fresh event loop: other tests' asyncio.run() leave none behind, and Pulumi's runtime
    # binds its futures to the loop current when the mocks are set.
    asyncio.set_event_loop(asyncio.new_event_loop())
    recorder = Recorder()
    pulumi.runtime.set_mocks(recorder, preview=False)
    checked: list[bool] = []
    program(recorder, checked)
    # the checks run in an `apply` callback, which Pulumi skips while any input is unknown
    assert checked == [True], "the program's outputs never resolved: nothing was checked"


@pulumi.runtime.test  # type: ignore[untyped-decorator]
def program(recorder: Recorder, checked: list[bool]) -> pulumi.Output[Any]:
    stack = stack_module.deploy(stack_module.StackConfig(namespace="mail-system", operator_image="reg/op:1.2"))

    def check(_: Any) -> None:
        by_type: dict[str, list[pulumi.runtime.MockResourceArgs]] = {}
        for r in recorder.resources:
            by_type.setdefault(r.typ, []).append(r)
        crds = by_type["kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition"]
        assert sorted(r.name for r in crds) == sorted(
            f"{p}.smtpinfra.com" for p in ("campaigns", "ippools", "smtpservers", "tenants", "warmupplans"))
        release = by_type["kubernetes:helm.sh/v3:Release"][0]
        assert release.inputs["namespace"] == "mail-system"
        assert release.inputs["skipCrds"] is True
        assert release.inputs["values"]["image"] == {"repository": "reg/op", "tag": "1.2"}
        kinds = sorted(r.typ.rsplit(":", 1)[-1] for r in recorder.resources if r.typ.startswith("kubernetes:smtpinfra"))
        assert kinds == ["Campaign", "IpPool", "SmtpServer", "Tenant", "WarmupPlan", "WarmupPlan"]
        checked.append(True)

    return pulumi.Output.all(*[c.urn for c in stack.crds], stack.operator.urn,
                             *[e.urn for e in stack.examples]).apply(check)
