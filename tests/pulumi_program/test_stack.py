"""The Pulumi program, run under Pulumi's runtime mocks (no CLI, no cluster)."""

from __future__ import annotations

import pulumi
import pytest

from tests.pulumi_program.capture import load_stack_module, run

pytestmark = pytest.mark.pulumi


def test_stack_declares_crds_operator_and_examples():
    stack_module = load_stack_module()

    def program() -> list[pulumi.Resource]:
        stack = stack_module.deploy(stack_module.StackConfig(namespace="mail-system", operator_image="reg/op:1.2"))
        return [*stack.crds, stack.operator, *stack.examples]

    recorder = run(program)
    crds = recorder.of_type(":CustomResourceDefinition")
    assert sorted(r.name for r in crds) == sorted(
        f"{p}.smtpinfra.com" for p in ("campaigns", "ippools", "smtpservers", "tenants", "warmupplans"))
    (release,) = recorder.of_type("kubernetes:helm.sh/v3:Release")
    assert release.inputs["namespace"] == "mail-system"
    assert release.inputs["skipCrds"] is True
    assert release.inputs["values"]["image"] == {"repository": "reg/op", "tag": "1.2"}
    kinds = sorted(r.typ.rsplit(":", 1)[-1] for r in recorder.resources if r.typ.startswith("kubernetes:smtpinfra"))
    assert kinds == ["Campaign", "IpPool", "SmtpServer", "Tenant", "WarmupPlan", "WarmupPlan"]
    # the examples come through the typed component
    (component,) = recorder.of_type("smtpinfra:index:Resources")
    assert component.name == "examples"
