"""A reusable Pulumi component for smtp-infra's five custom resources, typed by the API's own models.

Each resource is given as a `Declared` whose spec is the pydantic model the CRDs are generated from
(`SmtpServerSpec`, `IpPoolSpec`, ...) or a mapping validated against it, so a misspelt field or a bad
value fails `pulumi preview` with the model's message instead of a refused apply half-way through
`pulumi up`. Only the fields the program set reach the manifest: defaults stay the API server's.

The component orders what it creates the way the operator resolves references: WarmupPlans, then
IpPools (which name a plan), Tenants, SmtpServers (which name pools and serve tenants), Campaigns
(which name a server and a tenant). Nothing here needs the operator's code or a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pulumi
import pulumi_kubernetes as k8s
from pydantic import ValidationError

from smtpinfra_api.meta import API_VERSION, ApiModel
from smtpinfra_api.v1alpha1 import (
    KINDS,
    CampaignSpec,
    IpPoolSpec,
    Kind,
    SmtpServerSpec,
    TenantSpec,
    WarmupPlanSpec,
)

SpecT = TypeVar("SpecT", bound=ApiModel)

#: The component's Pulumi type token.
TYPE_TOKEN = "smtpinfra:index:Resources"


@dataclass(frozen=True)
class Declared(Generic[SpecT]):
    """One custom resource: its name, namespace (namespaced kinds only), metadata and spec."""

    name: str
    spec: SpecT
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


class SpecError(ValueError):
    """A declared resource the API would refuse, named by kind and name."""


def declared(model: type[SpecT], name: str, spec: SpecT | Mapping[str, Any], *, namespace: str | None = None,
             labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None,
             ) -> Declared[SpecT]:
    """A `Declared` whose spec (a model or a camelCase/snake_case mapping) is validated by `model` now."""
    if not isinstance(spec, model):
        try:
            spec = model.model_validate(dict(spec))
        except ValidationError as error:
            raise SpecError(f"{_kind_of(model).kind} {name}: {error}") from error
    return Declared(name=name, spec=spec, namespace=namespace, labels=dict(labels or {}),
                    annotations=dict(annotations or {}))


@dataclass(frozen=True)
class ResourcesArgs:
    """What the component creates, per kind. Namespaced kinds (SmtpServer, Campaign) need a namespace."""

    warmup_plans: Sequence[Declared[WarmupPlanSpec]] = ()
    ip_pools: Sequence[Declared[IpPoolSpec]] = ()
    tenants: Sequence[Declared[TenantSpec]] = ()
    smtp_servers: Sequence[Declared[SmtpServerSpec]] = ()
    campaigns: Sequence[Declared[CampaignSpec]] = ()


def _kind_of(model: type[ApiModel]) -> type[Kind]:
    (kind,) = [k for k in KINDS if k.spec_model is model]
    return kind


def manifest(item: Declared[Any]) -> dict[str, Any]:
    """The object the component declares for `item` (pure: what `kubectl apply` would get)."""
    kind = _kind_of(type(item.spec))
    namespaced = kind.scope == "Namespaced"
    if namespaced and not item.namespace:
        raise SpecError(f"{kind.kind} {item.name}: a namespace is required (the kind is namespaced)")
    if not namespaced and item.namespace:
        raise SpecError(f"{kind.kind} {item.name}: the kind is cluster-scoped, it takes no namespace")
    metadata: dict[str, Any] = {"name": item.name}
    if item.namespace:
        metadata["namespace"] = item.namespace
    if item.labels:
        metadata["labels"] = dict(item.labels)
    if item.annotations:
        metadata["annotations"] = dict(item.annotations)
    spec = item.spec.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return {"apiVersion": API_VERSION, "kind": kind.kind, "metadata": metadata, "spec": spec}


def _check_unique(groups: Iterable[Sequence[Declared[Any]]]) -> None:
    seen: set[tuple[str, str | None, str]] = set()
    for group in groups:
        for item in group:
            key = (_kind_of(type(item.spec)).kind, item.namespace, item.name)
            if key in seen:
                raise SpecError(f"{key[0]} {item.namespace + '/' if item.namespace else ''}{item.name} "
                                "is declared twice")
            seen.add(key)


class Resources(pulumi.ComponentResource):
    """smtp-infra custom resources as one Pulumi component (`smtpinfra:index:Resources`).

    `resources` maps "Kind/name" (cluster-scoped) or "Kind/namespace/name" to the created
    `CustomResource`; `opts.depends_on` should include the CRDs and the operator when the same
    program installs them.
    """

    resources: dict[str, k8s.apiextensions.CustomResource]

    def __init__(self, name: str, args: ResourcesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        order = (args.warmup_plans, args.ip_pools, args.tenants, args.smtp_servers, args.campaigns)
        _check_unique(order)
        self.resources = {}
        earlier: list[pulumi.Resource] = []
        for group in order:
            created = [self._declare(name, item, earlier) for item in group]
            earlier = [*earlier, *created]
        self.register_outputs({"names": sorted(self.resources)})

    def _declare(self, component: str, item: Declared[Any], after: list[pulumi.Resource],
                 ) -> k8s.apiextensions.CustomResource:
        body = manifest(item)
        key = "/".join(p for p in (body["kind"], item.namespace, item.name) if p)
        resource = k8s.apiextensions.CustomResource(
            f"{component}-{key.lower().replace('/', '-')}",
            api_version=body["apiVersion"], kind=body["kind"], metadata=body["metadata"], spec=body["spec"],
            opts=pulumi.ResourceOptions(parent=self, depends_on=after),
        )
        self.resources[key] = resource
        return resource


_SPEC_BY_KIND: dict[str, type[ApiModel]] = {k.kind: k.spec_model for k in KINDS}
_FIELD_BY_KIND = {"WarmupPlan": "warmup_plans", "IpPool": "ip_pools", "Tenant": "tenants",
                  "SmtpServer": "smtp_servers", "Campaign": "campaigns"}


def args_from_manifests(documents: Iterable[Mapping[str, Any]]) -> ResourcesArgs:
    """`ResourcesArgs` from smtpinfra.com manifests (e.g. examples/*.yaml); other documents are ignored."""
    groups: dict[str, list[Declared[Any]]] = {f: [] for f in _FIELD_BY_KIND.values()}
    for doc in documents:
        if doc.get("apiVersion") != API_VERSION or doc.get("kind") not in _SPEC_BY_KIND:
            continue
        meta = doc.get("metadata") or {}
        groups[_FIELD_BY_KIND[doc["kind"]]].append(declared(
            _SPEC_BY_KIND[doc["kind"]], meta["name"], doc.get("spec") or {}, namespace=meta.get("namespace"),
            labels=meta.get("labels"), annotations=meta.get("annotations")))
    return ResourcesArgs(**groups)
