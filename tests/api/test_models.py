"""The API models and the CRDs generated from them (no cluster needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from smtpinfra_api import crdgen
from smtpinfra_api.v1alpha1 import KINDS, CampaignSpec, Sender

pytestmark = pytest.mark.api

ROOT = Path(__file__).resolve().parents[2]


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.get("properties", {}).items():
            out.extend(_walk(value, f"{path}.{key}"))
        if isinstance(node.get("items"), dict):
            out.extend(_walk(node["items"], f"{path}[]"))
        if isinstance(node.get("additionalProperties"), dict):
            out.extend(_walk(node["additionalProperties"], f"{path}.*"))
    return out


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind):
    """Every node has a type; no $ref, anyOf, oneOf, allOf or additionalProperties: false remains."""
    schema = crdgen.crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "type" in node, f"{kind.kind}{path} has no type"
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs"):
            assert forbidden not in node, f"{kind.kind}{path} still has {forbidden}"
        assert node.get("additionalProperties") is not False, f"{kind.kind}{path}"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_field_has_a_description(kind):
    schema = crdgen.crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema["properties"]["spec"], ".spec") + _walk(
        schema["properties"]["status"], ".status"
    ):
        if path.endswith(("[]", ".*")) and node["type"] != "object":
            continue  # a scalar list item or map value is not a field of its own
        assert node.get("description"), f"{kind.kind}{path} has no description"


def test_optional_fields_become_nullable_and_refs_are_inlined():
    schema = crdgen.crd_for(next(k for k in KINDS if k.kind == "SmtpServer"))
    spec = schema["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    tls = spec["properties"]["tls"]
    assert tls["nullable"] is True
    assert tls["properties"]["issuerRef"]["properties"]["kind"]["enum"] == ["Issuer", "ClusterIssuer"]
    # The field's own description wins over the referenced model's docstring.
    assert tls["description"].startswith("TLS certificate for STARTTLS")


def test_crd_metadata_for_kubectl():
    for kind in KINDS:
        crd = crdgen.crd_for(kind)
        names = crd["spec"]["names"]
        assert names["categories"] == ["smtpinfra"]
        assert names["shortNames"]
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
        assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        assert status["kopf"]["x-kubernetes-preserve-unknown-fields"] is True
        assert status["conditions"]["x-kubernetes-list-type"] == "map"


def test_committed_crds_match_the_models():
    """`smtp-infra crds generate --check` passes on the committed tree."""
    result = subprocess.run(
        [sys.executable, "-m", "smtpinfra_cli", "crds", "generate", "--check"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr


def test_check_detects_drift(tmp_path):
    """The drift check fails on an edited, a missing and an extra file."""
    run = [sys.executable, "-m", "smtpinfra_cli", "crds", "generate", "-o", str(tmp_path)]
    assert subprocess.run(run, capture_output=True).returncode == 0
    assert subprocess.run([*run, "--check"], capture_output=True).returncode == 0
    target = tmp_path / "smtpinfra.com_tenants.yaml"
    target.write_text(target.read_text().replace("Most messages per hour", "Most messages an hour"))
    result = subprocess.run([*run, "--check"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "smtpinfra.com_tenants.yaml" in result.stderr
    subprocess.run(run, capture_output=True, check=True)
    (tmp_path / "smtpinfra.com_campaigns.yaml").unlink()
    assert subprocess.run([*run, "--check"], capture_output=True).returncode == 1
    subprocess.run(run, capture_output=True, check=True)
    (tmp_path / "smtpinfra.com_old.yaml").write_text("{}")
    assert subprocess.run([*run, "--check"], capture_output=True).returncode == 1


def test_examples_validate_against_the_models():
    kinds = {k.kind: k for k in KINDS}
    seen = set()
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion") == "smtpinfra.com/v1alpha1":
                kinds[doc["kind"]].spec_model.model_validate(doc["spec"])
                seen.add(doc["kind"])
    assert seen == set(kinds), f"examples lack {set(kinds) - seen}"


@pytest.mark.parametrize("bad", ["\r\n", "\n", "\t", "\x00", "\x7f", "\x85", "\u2028"])
def test_header_fields_refuse_control_characters_in_the_models_too(bad):
    """Objects built outside the API server (operator, tests) follow the same rule as its CEL."""
    with pytest.raises(ValidationError, match="must be a single line"):
        Sender(address="news@acme.example.com", name=f"ACME{bad}Bcc: x@example.net")
    spec = next(doc["spec"] for doc in yaml.safe_load_all((ROOT / "examples" / "campaign.yaml").read_text())
                if doc and doc.get("kind") == "Campaign")
    spec["subject"] = f"News{bad}Bcc: x@example.net"
    with pytest.raises(ValidationError, match="must be a single line"):
        CampaignSpec.model_validate(spec)
    spec["subject"] = "Ünïcödé news 📬"
    assert CampaignSpec.model_validate(spec).subject == "Ünïcödé news 📬"
