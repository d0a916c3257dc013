"""Pure functions on API objects: what caches keep of them, keys, versions, label selection.

An informer of 1,000 Tenants and 200 SmtpServers held mostly status, annotations and
managedFields nobody read; these decide what is kept instead (`cached`, `metadata`).
"""

from __future__ import annotations

import json
import re
import sys
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

Obj = dict[str, Any]
"""A Kubernetes object as decoded JSON."""

__all__ = ["Obj", "Packed", "cached", "identity", "known", "metadata", "object_key", "resource_version", "selects",
           "slim", "thaw", "version_number"]

OWN_ANNOTATION_PREFIX = "smtpinfra.com/"
CACHED_METADATA = ("name", "namespace", "uid", "labels", "creationTimestamp", "deletionTimestamp",
                   "resourceVersion", "generation", "ownerReferences")
STATUS_KEPT = frozenset({"Tenant", "IpPool", "SmtpServer", "ClusterKopfPeering"})
"""Kinds whose status a cache keeps (minus Kopf's bookkeeping): small, and read by every reconcile
(an IpPool's status holds its assignment, an SmtpServer's is what its reconcile compares the new
outcome with, a peering's status holds the replicas' keep-alives)."""
PACKED_STATUS = {"SmtpServer": frozenset({"dns"})}
"""Status fields a cache holds compressed (`Packed`): an SmtpServer's status.dns lists every record of
its tenants' domains (~66 KB as Python objects for 50 tenants, four fifths of the server), and only
its own reconcile reads it, to compare and to re-publish it."""


class Packed(Mapping[str, Any]):
    """A JSON object held as compressed bytes, decoded on each read.

    For large fields that are compared far more often than read. Equal to a mapping with the same
    content; not JSON-serialisable on purpose (`thaw` it first), so it can never be written out as {}.
    """

    __slots__ = ("_blob",)

    def __init__(self, value: Mapping[str, Any]) -> None:
        self._blob = zlib.compress(json.dumps(value, separators=(",", ":"), sort_keys=True).encode(), 1)

    def thaw(self) -> dict[str, Any]:
        """A fresh decoded copy: callers may change it freely."""
        decoded: dict[str, Any] = json.loads(zlib.decompress(self._blob))
        return decoded

    def __getitem__(self, key: str) -> Any:
        return self.thaw()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.thaw())

    def __len__(self) -> int:
        return len(self.thaw())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Packed):
            return self._blob == other._blob or self.thaw() == other.thaw()
        if isinstance(other, Mapping):
            return self.thaw() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Packed({self.thaw()!r})"


INTERNED_LENGTH = 64
"""Strings up to this long are interned when cached: keys, condition types, reasons, messages and
timestamps repeat across a thousand Tenants (a decoded JSON document shares its keys only within
itself), and halved what a cached Tenant takes."""


def shared_strings(value: Any) -> Any:
    """A copy of decoded JSON whose keys and short strings are interned (shared across objects)."""
    if isinstance(value, dict):
        return {sys.intern(k): shared_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shared_strings(v) for v in value]
    if type(value) is str and len(value) <= INTERNED_LENGTH:
        return sys.intern(value)
    return value


def thaw(value: Any) -> Any:
    """A `Packed` value decoded; anything else as it is."""
    return value.thaw() if isinstance(value, Packed) else value


def object_key(obj: Obj) -> tuple[str, str]:
    """(namespace, name); the namespace is "" for cluster-scoped objects."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def resource_version(obj: Obj) -> str:
    """An object's resourceVersion as the server gave it ("" when absent), to tell versions apart."""
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


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


def known(obj: Obj) -> Obj:
    """What `get_known` keeps of an object it read or we wrote: all of it but managedFields, strings shared.

    Its readers need the whole object (a Secret's data, a Service's status), but every Secret and
    Service we write is remembered, and each answer's managedFields and keys were its own copies.
    """
    meta = obj.get("metadata") or {}
    kept: Obj = shared_strings({**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}})
    return kept


def metadata(obj: Obj) -> Obj:
    """What a metadata-only cache keeps: enough to tell whether an object changed since we wrote it."""
    meta = obj.get("metadata") or {}
    kept: Obj = shared_strings({"metadata": {k: meta[k] for k in ("name", "namespace", "resourceVersion",
                                                                  "generation", "labels") if k in meta}})
    return kept


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
        pod: Obj = shared_strings(_cached_pod(obj, kept))
        return pod
    for key in ("spec", "data", "type"):
        if key in obj:
            kept[key] = obj[key]
    if obj.get("kind") in STATUS_KEPT and isinstance(obj.get("status"), dict):
        packed = PACKED_STATUS.get(str(obj.get("kind")), frozenset())
        kept["status"] = {k: Packed(v) if k in packed and isinstance(v, dict) else v
                          for k, v in obj["status"].items() if k != "kopf"}
    shared: Obj = shared_strings(kept)
    return shared


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
