"""Pure functions on API objects: what caches keep of them, keys, versions, label selection.

An informer of 1,000 Tenants and 200 SmtpServers held mostly status, annotations and
managedFields nobody read; these decide what is kept instead (`cached`, `metadata`).
"""

from __future__ import annotations

import re
from typing import Any

Obj = dict[str, Any]
"""A Kubernetes object as decoded JSON."""

__all__ = ["Obj", "cached", "identity", "metadata", "object_key", "selects", "slim", "version_number"]

OWN_ANNOTATION_PREFIX = "smtpinfra.com/"
CACHED_METADATA = ("name", "namespace", "uid", "labels", "creationTimestamp", "deletionTimestamp",
                   "resourceVersion", "generation", "ownerReferences")
STATUS_KEPT = frozenset({"Tenant", "IpPool", "SmtpServer", "ClusterKopfPeering"})
"""Kinds whose status a cache keeps (minus Kopf's bookkeeping): small, and read by every reconcile
(an IpPool's status holds its assignment, an SmtpServer's is what its reconcile compares the new
outcome with, a peering's status holds the replicas' keep-alives)."""


def object_key(obj: Obj) -> tuple[str, str]:
    """(namespace, name); the namespace is "" for cluster-scoped objects."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def version_number(obj: Obj | None) -> int | None:
    """An object's resourceVersion as a number, to order our writes against watch events.

    Kubernetes calls versions opaque; the API server's are etcd revisions, and anything else
    (None) is never taken as newer or older."""
    version = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    return int(version) if isinstance(version, str) and version.isdigit() else None


def identity(obj: Obj) -> Obj:
    """Keep the object whole (the pod runner needs every field of pods, ConfigMaps and Secrets)."""
    return obj


def slim(obj: Obj) -> Obj:
    """Drop managedFields: nobody here reads them, and they are most of a listed object's bytes."""
    (obj.get("metadata") or {}).pop("managedFields", None)
    return obj


def metadata(obj: Obj) -> Obj:
    """What a metadata-only cache keeps: enough to tell whether an object changed since we wrote it."""
    meta = obj.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in ("name", "namespace", "resourceVersion", "generation", "labels")
                         if k in meta}}


def _cached_pod(obj: Obj, kept: Obj) -> Obj:
    """A pod as its server's readiness and usage need it: our annotations, phase, IP, the Ready condition."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    own = {k: v for k, v in annotations.items() if k.startswith(OWN_ANNOTATION_PREFIX)}
    if own:
        kept["metadata"]["annotations"] = own
    status = obj.get("status") or {}
    kept["status"] = {"phase": status.get("phase"), "podIP": status.get("podIP"),
                      "conditions": [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]}
    return kept


def cached(obj: Obj) -> Obj:
    """What an operator's cache keeps of an object: identity, labels, spec (and a Secret's data).

    Readers of cached lists decide from specs and labels; a pod keeps its readiness, and the
    kinds in STATUS_KEPT their status, so a resync of an unchanged object costs no request.
    """
    meta = obj.get("metadata") or {}
    kept: Obj = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                 "metadata": {k: meta[k] for k in CACHED_METADATA if k in meta}}
    if obj.get("kind") == "Pod":
        return _cached_pod(obj, kept)
    for key in ("spec", "data", "type"):
        if key in obj:
            kept[key] = obj[key]
    if obj.get("kind") in STATUS_KEPT and isinstance(obj.get("status"), dict):
        kept["status"] = {k: v for k, v in obj["status"].items() if k != "kopf"}
    return kept


_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s*(?:(==?|!=)\s*([A-Za-z0-9._-]*))?\s*$")


def selects(selector: str | None, labels: dict[str, str]) -> bool:
    """Whether a simple label selector (`k`, `!k`, `k=v`, `k!=v`, comma-separated) selects `labels`.

    Anything it cannot parse counts as no match: a write-through is then skipped and the watch
    event brings the object a moment later instead (storing a non-matching object would stick).
    """
    if not selector:
        return True
    for requirement in selector.split(","):
        negated = requirement.strip().startswith("!")
        match = _REQUIREMENT.match(requirement.strip().lstrip("!"))
        if match is None:
            return False
        key, op, value = match.groups()
        if op is None:
            if (key in labels) == negated:
                return False
        elif (labels.get(key) == value) != (op != "!="):
            return False
    return True
