"""The Pulumi program's output, proven on the local control plane.

`pulumi up` cannot run here (the Python language host is not served), so the program runs under
Pulumi's mocks, every resource it declares is written out as a manifest with its inputs resolved,
and those manifests go to the real API server: `kubectl apply --dry-run=server` for all of them
(the CRDs, namespaces, the operator chart rendered with the release's values, the examples), then
for real, and the operator reconciles them. Anything the API server refuses fails the test.
"""

from __future__ import annotations

import base64
import functools
import subprocess
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from tests.kube import KUBE_VERSION, condition, find, get, helm, wait_for
from tests.pulumi_program.capture import Recorder, load_stack_module, run

pytestmark = [pytest.mark.pulumi, pytest.mark.operator, pytest.mark.e2e]

RELEASE_TYPE = "kubernetes:helm.sh/v3:Release"


def declared_stack() -> Recorder:
    stack_module = load_stack_module()

    def program() -> list[pulumi.Resource]:
        stack = stack_module.deploy(stack_module.StackConfig(namespace="pulumi-system"))
        return [*stack.crds, stack.namespace, stack.operator, *stack.examples]

    return run(program)


def manifests(recorder: Recorder) -> list[dict[str, Any]]:
    """Every Kubernetes object the program declares, as the provider would send it."""
    out = []
    for r in recorder.resources:
        if not r.typ.startswith("kubernetes:") or r.typ == RELEASE_TYPE:
            continue
        group_version, kind = r.typ.removeprefix("kubernetes:").rsplit(":", 1)
        api_version = group_version.removeprefix("core/")
        obj = {k: v for k, v in r.inputs.items() if k not in {"apiVersion", "kind"}}
        out.append({"apiVersion": r.inputs.get("apiVersion", api_version), "kind": r.inputs.get("kind", kind),
                    **obj})
    return out


def release_manifests(cp: Any, recorder: Recorder, tmp_path: Path) -> list[dict[str, Any]]:
    """The operator chart rendered with exactly the release's declared chart, namespace and values."""
    (release,) = recorder.of_type(":Release")
    inputs = release.inputs
    values = tmp_path / "release-values.yaml"
    values.write_text(yaml.safe_dump(inputs.get("values") or {}))
    args = ["template", release.name, inputs["chart"], "--namespace", inputs["namespace"],
            "--kube-version", KUBE_VERSION, "-f", str(values)]
    if not inputs.get("skipCrds"):
        args.append("--include-crds")
    return [d for d in yaml.safe_load_all(helm(cp, *args).stdout) if d]


def kubectl_apply(cp: Any, docs: list[dict[str, Any]], *flags: str) -> subprocess.CompletedProcess[str]:
    return cp.kubectl("apply", "--validate=strict", *flags, "-f", "-", input=yaml.safe_dump_all(docs), check=False)


def test_declared_manifests_are_written_out_with_every_input_resolved(tmp_path):
    docs = manifests(declared_stack())
    path = tmp_path / "declared.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(path.read_text()))
    assert kinds == sorted(["CustomResourceDefinition"] * 5 + ["Namespace"] * 2
                           + ["Campaign", "IpPool", "SmtpServer", "Tenant", "WarmupPlan", "WarmupPlan"])
    # a resolved input is a plain value: no Output or unknown sentinel reached the manifest
    text = path.read_text()
    assert "Output" not in text and "04da6b54-80e4-46f7-96ec-b56ff0331ba9" not in text


def test_the_api_server_refuses_what_it_must(crds):
    """The check below can fail: a declared object with an unknown field is refused by the same call."""
    docs = [d for d in manifests(declared_stack()) if d["kind"] == "Tenant"]
    docs[0]["spec"]["quotaz"] = {"perDay": 1}
    result = kubectl_apply(crds, docs, "--dry-run=server")
    assert result.returncode != 0 and "quotaz" in result.stderr


def test_program_output_is_accepted_then_reconciled(operator, pod_runner, tmp_path, tls_files):
    cp = operator.cp
    recorder = declared_stack()
    docs = manifests(recorder)
    chart = release_manifests(cp, recorder, tmp_path)
    # The namespaces first (for real), so the namespaced objects of the dry run have somewhere to go.
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    result = kubectl_apply(cp, namespaces)
    assert result.returncode == 0, result.stderr
    everything = docs + chart
    result = kubectl_apply(cp, everything, "--dry-run=server")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(everything)

    # For real: the custom resources (the CRDs are the session's, from the same files; the operator
    # of this test module runs with the chart's RBAC).
    cert, key = tls_files
    cp.kubectl("create", "secret", "tls", "smtp-mail-example-com-tls", f"--cert={cert}", f"--key={key}",
               check=False)
    ours = [d for d in docs if d["apiVersion"] == "smtpinfra.com/v1alpha1"]
    result = kubectl_apply(cp, ours)
    try:
        assert result.returncode == 0, result.stderr

        def ready(kind: str, name: str, namespace: str | None = None) -> bool:
            obj = find(cp, kind, name, namespace)
            c = obj and condition(obj, "Ready")
            return bool(c and c["status"] == "True")

        for kind, name in (("warmupplan", "standard"), ("warmupplan", "geometric"), ("tenant", "acme"),
                           ("ippool", "transactional")):
            wait_for(functools.partial(ready, kind, name), timeout=120, interval=1, what=f"{kind}/{name} Ready")
        wait_for(lambda: ready("smtpserver", "outbound", "default"), timeout=180, interval=1,
                 what="smtpserver/outbound Ready (its MTA pods running)")
        server = get(cp, "smtpserver", "outbound", "default")
        assert server["status"]["readyReplicas"] == 2
        assert {a["address"] for a in server["status"]["sendingAddresses"]} == {"127.0.10.1", "127.0.10.2"}
        secret = get(cp, "secret", "smtp-credentials", "tenant-acme")
        assert base64.b64decode(secret["data"]["username"]).decode() == "acme"
        campaign = get(cp, "campaign", "november-newsletter", "tenant-acme")
        assert campaign["status"]["observedGeneration"] == campaign["metadata"]["generation"]
        assert condition(campaign, "Ready") is not None
    finally:
        # Leave the session cluster as it was: later modules reuse the names and pod addresses.
        cp.kubectl("delete", "--wait=false", "-f", "-", input=yaml.safe_dump_all(ours), check=False)
