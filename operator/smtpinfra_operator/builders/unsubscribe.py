"""The unsubscribe key Secret of an SmtpServer (pure): the HMAC key of its one-click unsubscribe links.

One key per server, shared by every replica (any replica's /unsubscribe/ endpoint verifies a link
whichever sender signed it) and copied by the Campaign controller into each campaign's namespace
for the sender. Created once, never rewritten, like the VERP key.
"""

from __future__ import annotations

import secrets
from pathlib import PurePosixPath
from typing import Any

from .verp import Owner

KEY = "key"
VOLUME = "unsubscribe"
UNSUBSCRIBE_DIR = PurePosixPath("/etc/smtp-infra/unsubscribe")
KEY_FILE = UNSUBSCRIBE_DIR / KEY
"""Where the MTA pods read the key (the config's `unsubscribe.keys`)."""


def secret_name(server: str) -> str:
    return f"{server}-unsubscribe"


def new_key() -> str:
    """A fresh random key (256 bits, hex)."""
    return secrets.token_hex(32)


def secret(owner: Owner, labels: dict[str, str], key: str) -> dict[str, Any]:
    meta = {"name": secret_name(owner.name), "namespace": owner.namespace, "labels": labels,
            "ownerReferences": [owner.reference()]}
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta, "stringData": {KEY: key}}


def volume(server: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod volume, container mount); optional, so pods of a server made before the key still start."""
    return ({"name": VOLUME, "secret": {"secretName": secret_name(server), "optional": True}},
            {"name": VOLUME, "mountPath": str(UNSUBSCRIBE_DIR), "readOnly": True})
