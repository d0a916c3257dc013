"""Password hashes for SMTP credentials.

The operator hashes tenant passwords with :func:`hash_password` and renders only the hash into the
MTA's config or credentials Secret; the MTA checks AUTH attempts with :func:`verify_password`.
The string formats are passlib's modular-crypt formats, so the hashes are portable:

* ``$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<hash>`` (default, memory-hard)
* ``$pbkdf2-sha256$<rounds>$<salt>$<hash>``

and one format of our own for secrets that are generated, never chosen by a person:

* ``$hmac-sha256$<salt>$<hash>``: HMAC-SHA256 keyed with a random 16-byte salt over the password.

A slow KDF only protects passwords with little entropy, which an attacker holding the hash could
otherwise guess. The operator's generated tenant passwords carry 190 random bits: nobody can
enumerate them, however fast one guess is, so a salted HMAC is as safe for them as scrypt and
costs microseconds instead of ~50 ms and 16 MiB per hash (which made a bulk apply of tenants
wait in line). :func:`hash_password` refuses this scheme for passwords shorter than
``MIN_GENERATED_LENGTH`` characters, so it cannot be chosen by mistake for a human's password.

``<salt>`` and ``<hash>`` use passlib's "adapted base64" (standard alphabet, ``.`` for ``+``, no padding).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from typing import Literal

Scheme = Literal["scrypt", "pbkdf2-sha256", "hmac-sha256"]

SCRYPT_LN = 14
SCRYPT_R = 8
SCRYPT_P = 1
PBKDF2_ROUNDS = 600_000
_KEY_LEN = 32
MIN_GENERATED_LENGTH = 20
"""Shortest password ``hmac-sha256`` hashes (a generated 20-character URL-safe token holds 120 bits)."""

_SCRYPT_RE = re.compile(r"^\$scrypt\$ln=(\d{1,2}),r=(\d{1,3}),p=(\d{1,3})\$([A-Za-z0-9./]+)\$([A-Za-z0-9./]+)$")
_PBKDF2_RE = re.compile(r"^\$pbkdf2-sha256\$(\d{1,9})\$([A-Za-z0-9./]+)\$([A-Za-z0-9./]+)$")
_HMAC_RE = re.compile(r"^\$hmac-sha256\$([A-Za-z0-9./]{22,64})\$([A-Za-z0-9./]{43})$")
"""Salt of 16 to 48 bytes; the digest is exactly 32 bytes (43 characters)."""


def _ab64_encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=").replace("+", ".")


def _ab64_decode(text: str) -> bytes:
    text = text.replace(".", "+")
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: bytes, salt: bytes, ln: int, r: int, p: int, dklen: int) -> bytes:
    n = 1 << ln
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * n * r * p + (1 << 20), dklen=dklen)


def _hmac(password: bytes, salt: bytes) -> bytes:
    return hmac.new(salt, password, hashlib.sha256).digest()


def hash_password(password: str, scheme: Scheme = "scrypt", *, cost: int | None = None) -> str:
    """Hash a password into a self-describing string (the operator calls this; never store plaintext).

    ``cost`` is log2(N) for scrypt and the iteration count for PBKDF2. ``hmac-sha256`` is for
    generated high-entropy secrets only (see the module docstring) and takes no cost.
    """
    salt = os.urandom(16)
    secret = password.encode("utf-8")
    if scheme == "scrypt":
        ln = SCRYPT_LN if cost is None else cost
        if not 10 <= ln <= 20:
            raise ValueError("scrypt cost (ln) must be between 10 and 20")
        digest = _scrypt(secret, salt, ln, SCRYPT_R, SCRYPT_P, _KEY_LEN)
        return f"$scrypt$ln={ln},r={SCRYPT_R},p={SCRYPT_P}${_ab64_encode(salt)}${_ab64_encode(digest)}"
    if scheme == "pbkdf2-sha256":
        rounds = PBKDF2_ROUNDS if cost is None else cost
        if rounds < 1000:
            raise ValueError("pbkdf2-sha256 needs at least 1000 rounds")
        digest = hashlib.pbkdf2_hmac("sha256", secret, salt, rounds, _KEY_LEN)
        return f"$pbkdf2-sha256${rounds}${_ab64_encode(salt)}${_ab64_encode(digest)}"
    if scheme == "hmac-sha256":
        if cost is not None:
            raise ValueError("hmac-sha256 has no cost parameter")
        if len(password) < MIN_GENERATED_LENGTH:
            raise ValueError(f"hmac-sha256 is for generated secrets of at least {MIN_GENERATED_LENGTH} characters; "
                             "hash a chosen password with scrypt")
        return f"$hmac-sha256${_ab64_encode(salt)}${_ab64_encode(_hmac(secret, salt))}"
    raise ValueError(f"unknown password hash scheme {scheme!r}")


def is_password_hash(value: str) -> bool:
    """True when ``value`` is a hash string this module can verify (used by config validation)."""
    m = _SCRYPT_RE.match(value)
    if m:
        return 10 <= int(m.group(1)) <= 20 and int(m.group(2)) > 0 and int(m.group(3)) > 0
    m = _PBKDF2_RE.match(value)
    if m:
        return int(m.group(1)) >= 1000
    return _HMAC_RE.match(value) is not None


def verify_password(password: str | bytes, hashed: str) -> bool:
    """Constant-time check of ``password`` against a hash from :func:`hash_password`.

    Malformed hashes verify as False rather than raising, so a bad entry locks one user out
    instead of crashing a session.
    """
    secret = password if isinstance(password, bytes) else password.encode("utf-8")
    try:
        m = _SCRYPT_RE.match(hashed)
        if m:
            ln, r, p = int(m.group(1)), int(m.group(2)), int(m.group(3))
            if not 10 <= ln <= 20:
                return False
            expected = _ab64_decode(m.group(5))
            actual = _scrypt(secret, _ab64_decode(m.group(4)), ln, r, p, len(expected))
            return hmac.compare_digest(actual, expected)
        m = _PBKDF2_RE.match(hashed)
        if m:
            expected = _ab64_decode(m.group(3))
            actual = hashlib.pbkdf2_hmac("sha256", secret, _ab64_decode(m.group(2)), int(m.group(1)), len(expected))
            return hmac.compare_digest(actual, expected)
        m = _HMAC_RE.match(hashed)
        if m:
            return hmac.compare_digest(_hmac(secret, _ab64_decode(m.group(1))), _ab64_decode(m.group(2)))
    except (ValueError, MemoryError):
        return False
    return False
