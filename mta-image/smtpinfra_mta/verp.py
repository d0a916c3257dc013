"""VERP return paths: ``bounces+<token>@<return-path domain>``, one per tenant message and recipient.

Asynchronous bounces (RFC 3464 DSNs sent hours later by a remote MTA) and complaint reports (RFC 5965
ARF, when the feedback loop sends to the return path or quotes it) arrive on port 25 addressed to that
return path, so the token alone tells which tenant sent to which recipient: no per-message state has to
outlive delivery. The token is authenticated with an HMAC, so a forged "bounce" cannot put arbitrary
addresses on a tenant's suppression list.

Every replica of a server mounts the same keys (an operator-managed Secret), so any replica decodes the
tokens of any other. Several keys are accepted at once so the key can be rotated: the first signs, every
one verifies, and a bounce for mail signed with the previous key still matches after a rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

PREFIX = "bounces+"
_MAC_BYTES = 6
_MAX_LOCAL = 512  # longer than any token we make (tenant names and addresses are bounded): not ours
MIN_KEY_BYTES = 16


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
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"VERP key in {path} is too short (at least {MIN_KEY_BYTES} bytes)")
    return key


def load_keys(paths: Sequence[Path]) -> list[bytes]:
    """The keys in ``paths``, in order (the first signs); files that do not exist are skipped.

    A rotated Secret holds ``current`` and ``previous``; before the first rotation there is no
    ``previous``, so a missing file is normal. No key at all, or a short one, is an error.
    """
    keys: list[bytes] = []
    for path in paths:
        try:
            key = path.read_bytes().strip()
        except FileNotFoundError:
            continue
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"VERP key in {path} is too short (at least {MIN_KEY_BYTES} bytes)")
        if key not in keys:
            keys.append(key)
    if not keys:
        raise ValueError("no VERP key found in " + ", ".join(str(p) for p in paths))
    return keys


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _unb32(text: str) -> bytes:
    return base64.b32decode(text.upper() + "=" * (-len(text) % 8))


class Verp:
    """Encodes return paths with the first key and verifies them against every key."""

    def __init__(self, keys: bytes | Sequence[bytes], domain: str) -> None:
        self._keys = [keys] if isinstance(keys, bytes) else list(keys)
        if not self._keys:
            raise ValueError("at least one VERP key is needed")
        self.domain = domain.lower()

    @staticmethod
    def _mac(key: bytes, payload: bytes) -> bytes:
        return _b32(hmac.new(key, payload, hashlib.sha256).digest()[:_MAC_BYTES]).encode()

    def address(self, tenant: str, rcpt: str) -> str:
        """The envelope sender to use when sending ``tenant``'s message to ``rcpt``."""
        payload = tenant.encode() + b"\0" + rcpt.lower().encode("utf-8")
        return f"{PREFIX}{_b32(payload)}-{self._mac(self._keys[0], payload).decode()}@{self.domain}"

    def decode(self, address: str) -> tuple[str, str] | None:
        """(tenant, recipient) for an authentic return path of ours, else None (never raises).

        The MAC is compared as bytes: whatever text an address carries (non-ASCII included), a
        mismatch is a mismatch, not an exception.
        """
        local, _, domain = address.strip().strip("<>").rpartition("@")
        if domain.lower() != self.domain or not local.lower().startswith(PREFIX) or len(local) > _MAX_LOCAL:
            return None
        token, _, mac = local[len(PREFIX):].lower().rpartition("-")
        try:
            payload = _unb32(token)
        except (ValueError, TypeError):
            return None
        given = mac.encode("utf-8", "surrogateescape")
        # every key is tried (no early exit), so timing does not tell which key matched
        matched = [hmac.compare_digest(given, self._mac(key, payload)) for key in self._keys]
        if not any(matched):
            return None
        tenant, sep, rcpt = payload.partition(b"\0")
        if not sep:
            return None
        try:
            return tenant.decode(), rcpt.decode("utf-8")
        except UnicodeDecodeError:
            return None
