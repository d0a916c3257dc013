"""The VERP key Secret of an SmtpServer (pure): one key per server, shared by every replica, rotatable.

Every replica signs its return paths with the key in ``current`` and verifies with ``current`` and
``previous``, so a bounce or complaint that reaches any replica is matched, whichever replica sent the
message, and mail signed before a rotation still matches after it. The operator creates the Secret
once (like generated DKIM keys) and never rewrites it; ``smtp-infra verp rotate`` moves ``current`` to
``previous`` and puts a new key in ``current``. The MTA re-reads the mounted files on its config
reload, which a changed Secret triggers.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any, Protocol

from .mtaconfig import VERP_DIR


class Owner(Protocol):
    """The SmtpServer owning the Secret (``workload.Owner``; not imported: ``workload`` imports this module)."""

    @property
    def name(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    def reference(self) -> dict[str, Any]: ...

CURRENT, PREVIOUS = "current", "previous"
ROTATED_AT_ANNOTATION = "smtpinfra.com/verp-rotated-at"
VOLUME = "verp"


def secret_name(server: str) -> str:
    return f"{server}-verp"


def new_key() -> str:
    """A fresh random key (256 bits, hex)."""
    return secrets.token_hex(32)


def secret(owner: Owner, labels: dict[str, str], key: str) -> dict[str, Any]:
    """The Secret as first created: one key, no previous one."""
    meta = {"name": secret_name(owner.name), "namespace": owner.namespace, "labels": labels,
            "ownerReferences": [owner.reference()]}
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta, "stringData": {CURRENT: key}}


def rotated(existing: dict[str, Any], key: str, now: str) -> dict[str, Any]:
    """``existing`` (as read, with its resourceVersion) with ``key`` as current and the old current as previous.

    The resourceVersion is kept so that a replace fails instead of losing a concurrent rotation.
    """
    data = dict(existing.get("data") or {})
    if CURRENT not in data:
        raise ValueError(f"Secret {existing['metadata']['name']} has no '{CURRENT}' key to rotate")
    meta = dict(existing["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), ROTATED_AT_ANNOTATION: now}
    data[PREVIOUS] = data[CURRENT]
    data[CURRENT] = base64.b64encode(key.encode()).decode()
    return {**existing, "metadata": meta, "data": data}


def volume(server: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod volume, container mount) of the Secret; a Secret volume follows updates, so rotation needs no restart."""
    return ({"name": VOLUME, "secret": {"secretName": secret_name(server)}},
            {"name": VOLUME, "mountPath": str(VERP_DIR), "readOnly": True})
