"""The chart as a release: its values schema, version, pod security, and install/upgrade on the API server."""

from __future__ import annotations

import json
import subprocess
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube import CHART, KUBE_VERSION, ROOT, find, get, helm, wait_for

pytestmark = pytest.mark.chart

#: The chart as released before values.schema.json, probes and the PDB: what `helm upgrade` starts from.
PREVIOUS_CHART_COMMIT = "5d0392e"
#: An image kwok (not the local pod runner) plays, so the operator pod goes Running/Ready without a process.
KWOK_IMAGE = ("--set", "image.repository=registry.example/smtp-infra/operator")


def render(cp: Any, *args: str) -> list[dict[str, Any]]:
    out = helm(cp, "template", "x", str(CHART), "--namespace", "x-ns", "--kube-version", KUBE_VERSION, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def test_chart_and_app_version_are_the_package_version():
    package = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == (package, package), \
        "bump charts/smtp-infra/Chart.yaml version and appVersion with pyproject's version"
    for dockerfile in (ROOT / "operator" / "Dockerfile", ROOT / "mta-image" / "Dockerfile"):
        defaults = {line.split("=", 1)[1] for line in dockerfile.read_text().splitlines()
                    if line.startswith("ARG VERSION=")}
        assert defaults == {package}, f"{dockerfile}: ARG VERSION defaults {defaults}, the package is {package}"


def _leaves(values: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of every value a user may set (maps whose keys are free-form, like labels, count as one)."""
    out = []
    for key, value in values.items():
        path = (*prefix, key)
        out.append(path)
        if isinstance(value, dict) and value and key not in {"labels", "annotations", "requests", "limits",
                                                                "podSecurityContext", "securityContext"}:
            out += _leaves(value, path)
    return out


def test_values_schema_types_and_describes_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False  # a typo in a value name is an error, not a silent default
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in _leaves(values):
        node = schema
        for key in path:
            assert key in node.get("properties", {}), f"values.schema.json lacks {'.'.join(path)}"
            node = node["properties"][key]
        assert node.get("type") and node.get("description"), f"{'.'.join(path)} needs a type and a description"


@pytest.mark.parametrize(("setting", "complaint"), [
    ("replicaCount=0", "/replicaCount"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("replicaCont=2", "replicaCont"),
    ("resyncSeconds=soon", "/resyncSeconds"),
    ("metricsPort=70000", "/metricsPort"),
    ("monitoring.serviceMonitor.interval=often", "/monitoring/serviceMonitor/interval"),
])
def test_schema_refuses_bad_values(control_plane, setting, complaint):
    result = helm(control_plane, "lint", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert complaint in result.stdout + result.stderr


def test_operator_pod_is_restricted_with_probes_and_resources(control_plane):
    deployment = only(render(control_plane), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # The one writable path is a bounded emptyDir.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == {"/tmp"} and "emptyDir" in volumes[mounts["/tmp"]]
    assert "--liveness" in container["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_operator_pod_passes_the_restricted_pod_security_admission(control_plane):
    """The API server's own Pod Security admission, enforcing `restricted`, admits the operator pod."""
    namespace = "chart-restricted"
    control_plane.kubectl("create", "namespace", namespace, check=False)
    control_plane.kubectl("label", "--overwrite", "namespace", namespace,
                          "pod-security.kubernetes.io/enforce=restricted")
    template = only(render(control_plane), "Deployment")["spec"]["template"]
    control_plane.kubectl("create", "serviceaccount", template["spec"]["serviceAccountName"], "-n", namespace,
                          check=False)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator", "namespace": namespace,
                                                          **template["metadata"]}, "spec": template["spec"]}
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert result.returncode == 0, result.stderr
    # The check can fail: the same pod with a capability added is refused.
    pod["spec"]["containers"][0]["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"], "drop": ["ALL"]}
    refused = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert refused.returncode != 0 and "restricted" in refused.stderr


def test_disruption_budget_only_for_several_replicas(control_plane):
    assert not [d for d in render(control_plane) if d["kind"] == "PodDisruptionBudget"]
    pdb = only(render(control_plane, "--set", "replicaCount=2", "--set", "peering.name=smtp-infra"),
               "PodDisruptionBudget")
    deployment = only(render(control_plane, "--set", "replicaCount=2", "--set", "peering.name=smtp-infra"),
                      "Deployment")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_no_helm_hooks(control_plane):
    for args in ((), ("--set", "replicaCount=2", "--set", "peering.name=smtp-infra")):
        for doc in render(control_plane, "--include-crds", *args):
            assert "helm.sh/hook" not in doc["metadata"].get("annotations", {}), doc["metadata"]["name"]


def test_rendered_objects_are_accepted_by_the_api_server(control_plane):
    """Every object, CRDs included, validated by the API server (its OpenAPI, strict fields) without being stored."""
    control_plane.kubectl("create", "namespace", "x-ns", check=False)
    for args in ((), ("--set", "replicaCount=2", "--set", "peering.name=smtp-infra")):
        docs = render(control_plane, "--include-crds", *args)
        result = control_plane.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                                       input=yaml.safe_dump_all(docs), check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("(server dry run)") == len(docs)


def _previous_chart(tmp_path: Path) -> Path:
    archive = tmp_path / "previous.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--output", str(archive), PREVIOUS_CHART_COMMIT,
                    "charts/smtp-infra"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "charts" / "smtp-infra"


def _resources(cp: Any, release: str, namespace: str) -> set[tuple[str, str]]:
    manifest = helm(cp, "get", "manifest", release, "--namespace", namespace).stdout
    return {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(manifest) if d}


def _available(cp: Any, name: str, namespace: str, generation_at_least: int = 1) -> bool:
    deployment = get(cp, "deployment", name, namespace)
    status = deployment.get("status", {})
    available = any(c["type"] == "Available" and c["status"] == "True" for c in status.get("conditions", []))
    return (available and status.get("observedGeneration", 0) >= max(generation_at_least,
                                                                     deployment["metadata"]["generation"])
            and status.get("updatedReplicas") == status.get("replicas") == status.get("availableReplicas"))


def test_upgrade_from_the_previous_chart_keeps_every_resource(control_plane, tmp_path):
    cp, release, namespace = control_plane, "upgrade-test", "chart-upgrade"
    deployment = f"{release}-smtp-infra-operator"
    try:
        helm(cp, "install", release, str(_previous_chart(tmp_path)), "--namespace", namespace,
             "--create-namespace", *KWOK_IMAGE)
        before = _resources(cp, release, namespace)
        wait_for(lambda: _available(cp, deployment, namespace), timeout=180, interval=1,
                 what="the previous chart's operator Deployment Available")
        generation = get(cp, "deployment", deployment, namespace)["metadata"]["generation"]

        helm(cp, "upgrade", release, str(CHART), "--namespace", namespace, *KWOK_IMAGE)

        after = _resources(cp, release, namespace)
        assert before <= after, f"the upgrade dropped {before - after}"
        for kind, name in after:
            ns = None if kind in {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"} else namespace
            assert find(cp, kind.lower(), name, ns) is not None, f"{kind}/{name} missing after the upgrade"
        for crd in (CHART / "crds").glob("*.yaml"):
            name = yaml.safe_load(crd.read_text())["metadata"]["name"]
            assert find(cp, "crd", name) is not None, name
        upgraded = get(cp, "deployment", deployment, namespace)
        assert upgraded["metadata"]["generation"] > generation  # the new pod template (probes, /tmp) rolled out
        assert "readinessProbe" in upgraded["spec"]["template"]["spec"]["containers"][0]
        wait_for(lambda: _available(cp, deployment, namespace, upgraded["metadata"]["generation"]),
                 timeout=180, interval=1, what="the upgraded operator Deployment Available")
        assert "STATUS: deployed" in helm(cp, "status", release, "--namespace", namespace).stdout
    finally:
        helm(cp, "uninstall", release, "--namespace", namespace, check=False)


def test_metrics_on_their_own_port_with_a_service_and_a_servicemonitor(control_plane):
    """/metrics on 9090 (8080 is Kopf's liveness and the MTAs' port), a Service, and a ServiceMonitor
    only where Prometheus Operator's API exists."""
    docs = render(control_plane)
    (container,) = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--metrics-port") + 1] == "9090"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": 8080, "metrics": 9090}
    service = only(docs, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["selector"] == only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]

    with_crd = render(control_plane, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
                      "--set", "monitoring.serviceMonitor.labels.release=kube-prometheus-stack")
    monitor = only(with_crd, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= only(with_crd, "Service")["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["x-ns"]}
    assert not [d for d in render(control_plane, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
                                  "--set", "monitoring.serviceMonitor.enabled=false") if d["kind"] == "ServiceMonitor"]

    off = render(control_plane, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor", "--set", "metricsPort=0")
    assert not [d for d in off if d["kind"] in {"Service", "ServiceMonitor"}]
    (container,) = only(off, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["args"][container["args"].index("--metrics-port") + 1] == "0"
    assert [p["name"] for p in container["ports"]] == ["health"]
