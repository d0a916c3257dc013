"""VERP return paths: ``bounces+<token>@<return-path domain>``, one per tenant message and recipient.

Asynchronous bounces (RFC 3464 DSNs sent hours later by a remote MTA) and complaint reports (RFC 5965
ARF, when the feedback loop sends to the return path or quotes it) arrive on port 25 addressed to that
return path, so the token alone tells which tenant sent to which recipient: no per-message state has to
outlive delivery. The token is authenticated with an HMAC, so a forged "bounce" cannot put arbitrary
addresses on a tenant's suppression list. Replicas that share the key (a mounted Secret) decode each
other's tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

PREFIX = "bounces+"
_MAC_BYTES = 6


def load_or_create_key(path: Path) -> bytes:
    """The HMAC key from ``path``; created (random, mode 0600) if the file does not exist yet."""
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        key = secrets.token_hex(32).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key + b"\n")
            f.flush()
            os.fsync(f.fileno())
    if len(key) < 16:
        raise ValueError(f"VERP key in {path} is too short (at least 16 bytes)")
    return key


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _unb32(text: str) -> bytes:
    return base64.b32decode(text.upper() + "=" * (-len(text) % 8))


class Verp:
    """Encodes and verifies return paths for one key and return-path domain."""

    def __init__(self, key: bytes, domain: str) -> None:
        self._key = key
        self.domain = domain.lower()

    def _mac(self, payload: bytes) -> str:
        return _b32(hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES])

    def address(self, tenant: str, rcpt: str) -> str:
        """The envelope sender to use when sending ``tenant``'s message to ``rcpt``."""
        payload = tenant.encode() + b"\0" + rcpt.lower().encode("utf-8")
        return f"{PREFIX}{_b32(payload)}-{self._mac(payload)}@{self.domain}"

    def decode(self, address: str) -> tuple[str, str] | None:
        """(tenant, recipient) for an authentic return path of ours, else None."""
        local, _, domain = address.strip().strip("<>").rpartition("@")
        if domain.lower() != self.domain or not local.lower().startswith(PREFIX):
            return None
        token, _, mac = local[len(PREFIX):].lower().rpartition("-")
        try:
            payload = _unb32(token)
        except (ValueError, TypeError):
            return None
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        tenant, sep, rcpt = payload.partition(b"\0")
        if not sep:
            return None
        try:
            return tenant.decode(), rcpt.decode("utf-8")
        except UnicodeDecodeError:
            return None
