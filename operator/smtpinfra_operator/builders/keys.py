"""Tenant passwords the operator generates (DKIM keys: `smtpinfra_operator.dkimkeys`).

Not I/O, but not deterministic either: handlers call these once, store the result in a
Secret, and never call them again for the same object (keys are never silently rotated).
"""

from __future__ import annotations

import secrets
import string

PASSWORD_ALPHABET = string.ascii_letters + string.digits


def generate_password() -> str:
    """32 random letters and digits (190 bits). No '-' or '_': a password starting with '-' is taken
    for an option by command-line clients (swaks --auth-password -abc…)."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(32))
