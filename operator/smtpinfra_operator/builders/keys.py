"""Key material the operator generates: DKIM key pairs and tenant passwords.

Not I/O, but not deterministic either: handlers call these once, store the result in a
Secret, and never call them again for the same object (keys are never silently rotated).
"""

from __future__ import annotations

import base64
import secrets
import string

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from smtpinfra_api.v1alpha1 import DkimAlgorithm


def generate_dkim_key(algorithm: DkimAlgorithm, rsa_bits: int = 2048) -> tuple[str, str]:
    """(private key PEM, DNS TXT value `v=DKIM1; k=…; p=…`) for a new DKIM key."""
    if algorithm is DkimAlgorithm.ED25519_SHA256:
        ed_key = ed25519.Ed25519PrivateKey.generate()
        private = ed_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()).decode()
        raw = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return private, f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    private = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption()).decode()
    der = rsa_key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


PASSWORD_ALPHABET = string.ascii_letters + string.digits


def generate_password() -> str:
    """32 random letters and digits (190 bits). No '-' or '_': a password starting with '-' is taken
    for an option by command-line clients (swaks --auth-password -abc…)."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(32))
