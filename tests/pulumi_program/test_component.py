"""The `smtpinfra_pulumi.Resources` component under Pulumi's runtime mocks (no CLI, no cluster)."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
import yaml

from smtpinfra_api.v1alpha1 import IpPoolSpec, SmtpServerSpec, TenantSpec, WarmupPlanSpec
from smtpinfra_pulumi import Declared, Resources, ResourcesArgs, SpecError, args_from_manifests, declared, manifest
from tests.pulumi_program.capture import ROOT, run

pytestmark = pytest.mark.pulumi


def small_args() -> ResourcesArgs:
    return ResourcesArgs(
        warmup_plans=[declared(WarmupPlanSpec, "slow", {"stages": [{"day": 1, "dailyCap": 100}]})],
        ip_pools=[declared(IpPoolSpec, "pool-a", IpPoolSpec(addresses=["192.0.2.10"], warmup_plan="slow"))],
        tenants=[declared(TenantSpec, "acme", {"display_name": "ACME", "sender_domains": ["acme.example.com"]},
                          labels={"tier": "gold"})],
        smtp_servers=[declared(SmtpServerSpec, "out", {
            "hostname": "smtp.example.com", "ipPools": ["pool-a"], "returnPathDomain": "bounces.example.com",
            "tls": {"secretName": "out-tls"}}, namespace="mail")],
    )


def test_component_declares_each_resource_with_exactly_the_fields_set():
    created: dict[str, Resources] = {}

    def program() -> list[pulumi.Resource]:
        created["c"] = Resources("mail", small_args())
        return [created["c"], *created["c"].resources.values()]

    recorder = run(program)
    (component,) = recorder.of_type("smtpinfra:index:Resources")
    assert component.name == "mail"
    by_kind = {r.typ.rsplit(":", 1)[-1]: r.inputs for r in recorder.resources if r.typ.startswith("kubernetes:")}
    assert set(by_kind) == {"WarmupPlan", "IpPool", "Tenant", "SmtpServer"}
    assert all(i["apiVersion"] == "smtpinfra.com/v1alpha1" for i in by_kind.values())
    # camelCase on the wire, snake_case accepted on input, nothing the program did not set
    assert by_kind["Tenant"]["spec"] == {"displayName": "ACME", "senderDomains": ["acme.example.com"]}
    assert by_kind["Tenant"]["metadata"] == {"name": "acme", "labels": {"tier": "gold"}}
    assert by_kind["IpPool"]["spec"] == {"addresses": ["192.0.2.10"], "warmupPlan": "slow"}
    assert by_kind["SmtpServer"]["metadata"] == {"name": "out", "namespace": "mail"}
    assert by_kind["SmtpServer"]["spec"]["tls"] == {"secretName": "out-tls"}
    assert "replicas" not in by_kind["SmtpServer"]["spec"]  # the API server's default stays the default
    assert sorted(created["c"].resources) == ["IpPool/pool-a", "SmtpServer/mail/out", "Tenant/acme",
                                              "WarmupPlan/slow"]


def test_component_resources_are_its_children_in_reference_order():
    def program() -> list[pulumi.Resource]:
        component = Resources("mail", small_args())
        return [component, *component.resources.values()]

    recorder = run(program)
    order = [r.typ.rsplit(":", 1)[-1] for r in recorder.resources if r.typ.startswith("kubernetes:")]
    # each kind waits for the kinds it refers to (plans, pools, tenants, then servers)
    assert order == ["WarmupPlan", "IpPool", "Tenant", "SmtpServer"]


@pytest.mark.parametrize(("model", "spec", "message"), [
    (TenantSpec, {"displayName": "A", "senderDomains": ["acme.example.com"], "sendrDomains": []}, "sendrDomains"),
    (IpPoolSpec, {"addresses": ["192.0.2.1"], "dnsbl": {"zones": ["z.example"], "checkInterval": "soon"}},
     "dnsbl.checkInterval"),
    (WarmupPlanSpec, {"stages": [{"day": 1, "dailyCap": -5}]}, "dailyCap"),
])
def test_a_bad_spec_fails_before_anything_is_declared(model, spec, message):
    with pytest.raises(SpecError) as error:
        declared(model, "bad", spec)
    assert message in str(error.value)
    assert str(error.value).startswith(f"{model.__name__.removesuffix('Spec')} bad:")


def test_scope_and_duplicates_are_refused():
    server = declared(SmtpServerSpec, "out", {"hostname": "smtp.example.com", "ipPools": ["p"],
                                              "returnPathDomain": "b.example.com", "tls": {"secretName": "t"}})
    with pytest.raises(SpecError, match="a namespace is required"):
        manifest(server)
    with pytest.raises(SpecError, match="cluster-scoped"):
        manifest(declared(IpPoolSpec, "p", {"addresses": ["192.0.2.1"]}, namespace="mail"))
    plan = declared(WarmupPlanSpec, "w", {"stages": [{"day": 1, "dailyCap": 1}]})
    with pytest.raises(SpecError, match="declared twice"):
        run(lambda: [Resources("dup", ResourcesArgs(warmup_plans=[plan, plan]))])


def test_examples_round_trip_through_the_models_unchanged():
    """Every example manifest, read into the typed inputs, comes out as the same object."""
    documents: list[dict[str, Any]] = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    ours = [d for d in documents if d["apiVersion"] == "smtpinfra.com/v1alpha1"]
    args = args_from_manifests(documents)
    items: list[Declared[Any]] = [*args.warmup_plans, *args.ip_pools, *args.tenants, *args.smtp_servers,
                                  *args.campaigns]
    assert len(items) == len(ours) == 6
    rendered = {(m["kind"], m["metadata"]["name"]): m for m in map(manifest, items)}
    for doc in ours:
        assert rendered[(doc["kind"], doc["metadata"]["name"])] == doc
