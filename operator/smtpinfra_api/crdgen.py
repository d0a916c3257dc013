"""Turns the pydantic models into structural CustomResourceDefinitions.

Kubernetes wants a structural schema: every node has a `type`, no `$ref`, no `anyOf` of
types, `nullable` instead of `null` unions, no `additionalProperties: false`. pydantic's JSON
schema has all of those, so this module rewrites it; descriptions, enums, patterns, ranges
and our `x-kubernetes-*` extensions are kept.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .meta import CATEGORY, GROUP, VERSION
from .v1alpha1 import KINDS, Kind

# Keys pydantic emits that have no place (or no meaning) in a CRD schema.
_DROPPED_KEYS = {"title", "examples", "$defs", "discriminator", "const"}


class SchemaError(ValueError):
    """The model uses a construct a structural schema cannot express."""


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline a `$ref`, letting the referring node's own keys (description…) win."""
    if "$ref" not in node:
        return node
    name = node["$ref"].rsplit("/", 1)[-1]
    merged: dict[str, Any] = copy.deepcopy(defs[name])
    for key, value in node.items():
        if key != "$ref":
            merged[key] = value
    return merged


def _collapse_nullable(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """`anyOf: [X, {type: null}]` → X with `nullable: true`; outer keys are kept."""
    options = node.get("anyOf")
    if options is None:
        return node
    non_null = [o for o in options if o.get("type") != "null"]
    if len(non_null) != 1:
        raise SchemaError(f"unions are not structural: {options}")
    inner = _resolve(non_null[0], defs)
    merged = {**inner, **{k: v for k, v in node.items() if k != "anyOf"}}
    if len(non_null) != len(options):
        merged["nullable"] = True
    # Outer and inner validations both apply.
    rules = inner.get("x-kubernetes-validations", []) + node.get("x-kubernetes-validations", [])
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def _structural(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    """Rewrite one schema node (recursively) into its structural form."""
    node = _collapse_nullable(_resolve(node, defs), defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        out[key] = value
    if "const" in node:
        out["enum"] = [node["const"]]

    kind = out.get("type")
    if kind is None and "enum" in out:
        out["type"] = "string"
        kind = "string"
    if kind == "object":
        props = out.get("properties")
        if props is not None:
            out["properties"] = {
                name: _structural(sub, defs, f"{path}.{name}") for name, sub in props.items()
            }
            out.pop("additionalProperties", None)
        else:
            extra = out.get("additionalProperties")
            if isinstance(extra, dict) and extra:
                out["additionalProperties"] = _structural(extra, defs, f"{path}.*")
            else:
                out.pop("additionalProperties", None)
                if not out.get("x-kubernetes-preserve-unknown-fields"):
                    raise SchemaError(f"{path}: free-form object needs x-kubernetes-preserve-unknown-fields")
    elif kind == "array":
        out["items"] = _structural(out["items"], defs, f"{path}[]")
    elif kind is None:
        raise SchemaError(f"{path}: no type in {node}")

    default = out.get("default")
    if isinstance(default, dict):
        # The whole default object: the API server validates a default (CEL included) as it is,
        # without applying the nested defaults first, so `{}` would fail rules on its children.
        out["default"] = _prune(default)
    elif isinstance(default, list) and not default:
        out.pop("default")  # [] is what absence means; don't write it into every object
    elif "default" in out and default is None:
        out.pop("default")
    if path.startswith(".status"):
        out.pop("default", None)
    return _ordered(out)


def _prune(value: Any) -> Any:
    """Drop unset (None) members and empty lists from a default, as the wire format does."""
    if isinstance(value, dict):
        return {k: _prune(v) for k, v in value.items() if v is not None and v != []}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


_FIRST_KEYS = ("type", "description")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """type and description first, then the rest alphabetically: stable and easy to read."""
    keys = [k for k in _FIRST_KEYS if k in node] + sorted(k for k in node if k not in _FIRST_KEYS)
    return {k: node[k] for k in keys}


def model_schema(model: type[Any], path: str) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    defs = raw.get("$defs", {})
    return _structural(raw, defs, path)


def _check_descriptions(node: dict[str, Any], path: str, missing: list[str]) -> None:
    for name, sub in node.get("properties", {}).items():
        if not sub.get("description"):
            missing.append(f"{path}.{name}")
        _check_descriptions(sub, f"{path}.{name}", missing)
    if "items" in node:
        _check_descriptions(node["items"], f"{path}[]", missing)


def crd_for(kind: type[Kind]) -> dict[str, Any]:
    """The complete CustomResourceDefinition of one kind."""
    spec = model_schema(kind.spec_model, ".spec")
    status = model_schema(kind.status_model, ".status")
    spec["description"] = kind.spec_model.__doc__ or spec.get("description", "")
    status["description"] = kind.status_model.__doc__ or status.get("description", "")
    root: dict[str, Any] = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of the object: smtpinfra.com/v1alpha1."},
            "kind": {"type": "string", "description": f"Kind of the object: {kind.kind}."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if kind.top_level_validations:
        root["x-kubernetes-validations"] = list(kind.top_level_validations)
    missing: list[str] = []
    _check_descriptions({"properties": {"spec": spec, "status": status}}, "", missing)
    if missing:
        raise SchemaError(f"{kind.kind}: fields without a description: {', '.join(missing)}")
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name(),
            "labels": {"app.kubernetes.io/name": "smtp-infra", "app.kubernetes.io/part-of": "smtp-infra"},
        },
        "spec": {
            "group": GROUP,
            "scope": kind.scope,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular(),
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [c.wire() for c in kind.columns],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


HEADER = "# Generated by `smtp-infra crds generate` from operator/smtpinfra_api; do not edit.\n"


def render(kind: type[Kind]) -> str:
    """The YAML text of one CRD file."""
    return HEADER + yaml.safe_dump(crd_for(kind), sort_keys=False, width=120, allow_unicode=True)


def file_name(kind: type[Kind]) -> str:
    """crds/<group>_<plural>.yaml, the controller-gen naming convention."""
    return f"{GROUP}_{kind.plural}.yaml"


def desired_files() -> dict[str, str]:
    """Every generated file name and its content."""
    return {file_name(kind): render(kind) for kind in KINDS}


def write(directories: list[Path]) -> list[Path]:
    """Write the CRDs into each directory; returns the files that changed."""
    changed: list[Path] = []
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
        wanted = desired_files()
        for name, text in wanted.items():
            path = directory / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                changed.append(path)
        for stale in directory.glob(f"{GROUP}_*.yaml"):
            if stale.name not in wanted:
                stale.unlink()
                changed.append(stale)
    return changed


def stale(directories: list[Path]) -> list[Path]:
    """Files that differ from what the models generate (missing, changed or extra)."""
    out: list[Path] = []
    wanted = desired_files()
    for directory in directories:
        for name, text in wanted.items():
            path = directory / name
            if not path.exists() or path.read_text() != text:
                out.append(path)
        out.extend(p for p in directory.glob(f"{GROUP}_*.yaml") if p.name not in wanted)
    return out
