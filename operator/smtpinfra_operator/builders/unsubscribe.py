"""The unsubscribe key Secret of an SmtpServer (pure): the HMAC key of its one-click unsubscribe links.

One key per server, shared by every replica (any replica's /unsubscribe/ endpoint verifies a link
whichever sender signed it) and copied by the Campaign controller into each campaign's namespace
for the sender. Created once, never rewritten, like the VERP key.
"""

from __future__ import annotations

import secrets
from typing import Any

from .mtaconfig import ERASURE_SALT_FILE, UNSUBSCRIBE_DIR, UNSUBSCRIBE_KEY_FILE

__all__ = ["ERASURE_SALT", "KEY", "UNSUBSCRIBE_DIR", "secret", "secret_name", "volume"]
from .verp import Owner

KEY = UNSUBSCRIBE_KEY_FILE.name
ERASURE_SALT = ERASURE_SALT_FILE.name
"""A second secret in the same Secret: every replica derives the same per-tenant erasure-hash salt from it."""
VOLUME = "unsubscribe"


def secret_name(server: str) -> str:
    return f"{server}-unsubscribe"


def new_key() -> str:
    """A fresh random key (256 bits, hex)."""
    return secrets.token_hex(32)


def secret(owner: Owner, labels: dict[str, str], key: str) -> dict[str, Any]:
    meta = {"name": secret_name(owner.name), "namespace": owner.namespace, "labels": labels,
            "ownerReferences": [owner.reference()]}
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta,
            "stringData": {KEY: key, ERASURE_SALT: secrets.token_hex(32)}}


def volume(server: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod volume, container mount); optional, so pods of a server made before the key still start."""
    return ({"name": VOLUME, "secret": {"secretName": secret_name(server), "optional": True}},
            {"name": VOLUME, "mountPath": str(UNSUBSCRIBE_DIR), "readOnly": True})
