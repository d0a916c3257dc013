"""The smtp-infra stack as Pulumi resources: CRDs, the operator (Helm chart) and examples.

The CRDs and examples are read from the repository's generated files, so the program never
drifts from the API models; the chart is the same one `helm install` uses. The examples go
through the `smtpinfra_pulumi.Resources` component, so each is validated by its kind's model
before anything is sent to the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml

from smtpinfra_pulumi import Resources, args_from_manifests

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class StackConfig:
    """What a deployment may choose."""

    namespace: str = "smtp-infra-system"
    examples: bool = True
    operator_image: str = "smtp-infra/operator:0.1.0"


@dataclass
class Stack:
    """The resources created, for exports and tests."""

    crds: list[k8s.apiextensions.v1.CustomResourceDefinition] = field(default_factory=list)
    namespace: k8s.core.v1.Namespace | None = None
    operator: k8s.helm.v3.Release | None = None
    examples: list[pulumi.CustomResource] = field(default_factory=list)
    resources: Resources | None = None


def _documents(directory: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def deploy(config: StackConfig, root: Path = ROOT) -> Stack:
    """Declare every resource of the stack."""
    stack = Stack()
    for crd in _documents(root / "crds"):
        stack.crds.append(k8s.apiextensions.v1.CustomResourceDefinition(
            crd["metadata"]["name"], metadata=crd["metadata"], spec=crd["spec"],
        ))
    stack.namespace = k8s.core.v1.Namespace("operator-namespace", metadata={"name": config.namespace})
    repository, _, tag = config.operator_image.rpartition(":")
    stack.operator = k8s.helm.v3.Release(
        "smtp-infra",
        chart=str(root / "charts" / "smtp-infra"),
        namespace=config.namespace,
        skip_crds=True,  # managed above, so upgrades change them too (Helm never upgrades crds/)
        values={"image": {"repository": repository, "tag": tag}},
        opts=pulumi.ResourceOptions(depends_on=[*stack.crds, stack.namespace]),
    )
    if config.examples:
        documents = _documents(root / "examples")
        for doc in documents:
            if doc["apiVersion"] == "v1" and doc["kind"] == "Namespace":
                stack.examples.append(k8s.core.v1.Namespace(
                    f"namespace-{doc['metadata']['name']}", metadata=doc["metadata"],
                    opts=pulumi.ResourceOptions(depends_on=stack.crds)))
        stack.resources = Resources("examples", args_from_manifests(documents),
                                    opts=pulumi.ResourceOptions(depends_on=[*stack.crds, *stack.examples]))
        stack.examples += stack.resources.resources.values()
    pulumi.export("namespace", config.namespace)
    pulumi.export("crds", [c.metadata["name"] for c in stack.crds])
    return stack
