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

# Cost bounds a hash must stay within to be verified at all. A credentials line is tenant-provided data, and
# every AUTH attempt (and every unknown-user refusal) pays the cost its hash names: without a ceiling one
# line with ``r=999,p=999`` makes each login burn gigabytes and seconds for everyone sharing the process.
SCRYPT_MIN_LN, SCRYPT_MAX_LN = 10, 20
SCRYPT_MAX_R, SCRYPT_MAX_P = 32, 16
SCRYPT_MAX_MEMORY = 256 * 1024 * 1024
"""Bytes scrypt may use for one verification (128 * N * r); the default ln=14, r=8 uses 16 MiB."""
SCRYPT_MAX_WORK = (1 << 14) * 8 * 16
"""N * r * p at most 16x the default cost (ln=14, r=8, p=1), roughly 0.8 s of one core."""
PBKDF2_MIN_ROUNDS, PBKDF2_MAX_ROUNDS = 1000, 5_000_000

_SCRYPT_RE = re.compile(r"^\$scrypt\$ln=(\d{1,2}),r=(\d{1,4}),p=(\d{1,4})\$([A-Za-z0-9./]+)\$([A-Za-z0-9./]+)$")
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
        problem = scrypt_cost_problem(ln, SCRYPT_R, SCRYPT_P)
        if problem is not None:
            raise ValueError(problem)
        digest = _scrypt(secret, salt, ln, SCRYPT_R, SCRYPT_P, _KEY_LEN)
        return f"$scrypt$ln={ln},r={SCRYPT_R},p={SCRYPT_P}${_ab64_encode(salt)}${_ab64_encode(digest)}"
    if scheme == "pbkdf2-sha256":
        rounds = PBKDF2_ROUNDS if cost is None else cost
        problem = pbkdf2_cost_problem(rounds)
        if problem is not None:
            raise ValueError(problem)
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


def scrypt_cost_problem(ln: int, r: int, p: int) -> str | None:
    """Why scrypt parameters are outside the bounds this module verifies, or None when they are within."""
    if not SCRYPT_MIN_LN <= ln <= SCRYPT_MAX_LN:
        return f"scrypt cost ln={ln} is outside {SCRYPT_MIN_LN}..{SCRYPT_MAX_LN}"
    if not 1 <= r <= SCRYPT_MAX_R or not 1 <= p <= SCRYPT_MAX_P:
        return f"scrypt r={r}, p={p} must be within r=1..{SCRYPT_MAX_R}, p=1..{SCRYPT_MAX_P}"
    n = 1 << ln
    if 128 * n * r > SCRYPT_MAX_MEMORY:
        return f"scrypt ln={ln}, r={r} needs {128 * n * r >> 20} MiB per check (at most {SCRYPT_MAX_MEMORY >> 20})"
    if n * r * p > SCRYPT_MAX_WORK:
        return f"scrypt ln={ln}, r={r}, p={p} costs more than {SCRYPT_MAX_WORK // ((1 << 14) * 8)}x the default"
    return None


def pbkdf2_cost_problem(rounds: int) -> str | None:
    """Why a PBKDF2 round count is outside the bounds this module verifies, or None."""
    if not PBKDF2_MIN_ROUNDS <= rounds <= PBKDF2_MAX_ROUNDS:
        return f"pbkdf2-sha256 rounds must be within {PBKDF2_MIN_ROUNDS}..{PBKDF2_MAX_ROUNDS}, not {rounds}"
    return None


def hash_problem(value: str) -> str | None:
    """Why ``value`` is not a hash this module verifies (format, scheme, cost bounds), or None when it is."""
    m = _SCRYPT_RE.match(value)
    if m:
        return scrypt_cost_problem(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    m = _PBKDF2_RE.match(value)
    if m:
        return pbkdf2_cost_problem(int(m.group(1)))
    if _HMAC_RE.match(value):
        return None
    return ("not a supported password hash: expected '$scrypt$ln=N,r=R,p=P$salt$hash', "
            "'$pbkdf2-sha256$rounds$salt$hash' or '$hmac-sha256$salt$hash'")


def is_password_hash(value: str) -> bool:
    """True when ``value`` is a hash string this module verifies within its cost bounds (config validation)."""
    return hash_problem(value) is None


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
            if scrypt_cost_problem(ln, r, p) is not None:
                return False
            expected = _ab64_decode(m.group(5))
            actual = _scrypt(secret, _ab64_decode(m.group(4)), ln, r, p, len(expected))
            return hmac.compare_digest(actual, expected)
        m = _PBKDF2_RE.match(hashed)
        if m:
            if pbkdf2_cost_problem(int(m.group(1))) is not None:
                return False
            expected = _ab64_decode(m.group(3))
            actual = hashlib.pbkdf2_hmac("sha256", secret, _ab64_decode(m.group(2)), int(m.group(1)), len(expected))
            return hmac.compare_digest(actual, expected)
        m = _HMAC_RE.match(hashed)
        if m:
            return hmac.compare_digest(_hmac(secret, _ab64_decode(m.group(1))), _ab64_decode(m.group(2)))
    except (ValueError, MemoryError):
        return False
    return False
