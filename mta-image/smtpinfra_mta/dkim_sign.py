"""DKIM signing (dkimpy) per signing domain and selector, RSA-SHA256 and Ed25519-SHA256.

Keys come from files mounted from Secrets in any common format and are normalised once at load
into what dkimpy expects (PKCS#1 PEM for RSA, base64 seed for Ed25519). Messages are signed once
at acceptance, before spooling, so retries resend exactly the signed bytes.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from smtpinfra_mta.config import DkimKey
from smtpinfra_mta.tenants import domain_allowed

log = logging.getLogger(__name__)


class DkimKeyError(Exception):
    """A key file is missing or not a key of the configured algorithm."""


@dataclass(frozen=True)
class LoadedKey:
    domain: str
    selector: str
    algorithm: str
    private: bytes
    headers: tuple[bytes, ...]
    public_txt: str

    def __repr__(self) -> str:  # keep key material out of logs and tracebacks
        return f"LoadedKey({self.domain!r}, {self.selector!r}, {self.algorithm!r})"


def load_key(spec: DkimKey) -> LoadedKey:
    """Read and normalise one key; also derives the DNS TXT record value for it."""
    try:
        raw = spec.key_file.read_bytes()
    except OSError as exc:
        raise DkimKeyError(f"DKIM key {spec.domain}/{spec.selector}: cannot read {spec.key_file}: {exc}") from None
    headers = tuple(h.encode() for h in dict.fromkeys(["From", *spec.headers]))
    if spec.algorithm == "rsa-sha256":
        try:
            key = serialization.load_pem_private_key(raw, password=None)
        except ValueError as exc:
            raise DkimKeyError(f"DKIM key {spec.domain}/{spec.selector}: not a PEM private key") from exc
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DkimKeyError(f"DKIM key {spec.domain}/{spec.selector}: expected an RSA key")
        if key.key_size < 1024:
            raise DkimKeyError(f"DKIM key {spec.domain}/{spec.selector}: RSA keys must have at least 1024 bits")
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        pub = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        txt = f"v=DKIM1; k=rsa; p={base64.b64encode(pub).decode()}"
        return LoadedKey(spec.domain, spec.selector, spec.algorithm, pem, headers, txt)
    ed: ed25519.Ed25519PrivateKey
    try:
        loaded = serialization.load_pem_private_key(raw, password=None)
        if not isinstance(loaded, ed25519.Ed25519PrivateKey):
            raise DkimKeyError(f"DKIM key {spec.domain}/{spec.selector}: expected an Ed25519 key")
        ed = loaded
    except ValueError:
        try:
            seed = base64.b64decode(raw.strip(), validate=True)
            ed = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        except ValueError as exc:
            raise DkimKeyError(
                f"DKIM key {spec.domain}/{spec.selector}: not a PEM or base64-seed Ed25519 key"
            ) from exc
    seed = ed.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub_raw = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    txt = f"v=DKIM1; k=ed25519; p={base64.b64encode(pub_raw).decode()}"
    return LoadedKey(spec.domain, spec.selector, spec.algorithm, base64.b64encode(seed), headers, txt)


class DkimSigner:
    """All signing keys of one config generation."""

    def __init__(self, specs: list[DkimKey]) -> None:
        self.keys: list[LoadedKey] = []
        for spec in specs:
            try:
                self.keys.append(load_key(spec))
            except DkimKeyError as exc:
                # One broken Secret must not stop mail for every other domain; it is logged and unsigned.
                log.error("DKIM key not loaded", extra={"error": str(exc)})

    def keys_for(self, from_domain: str) -> list[LoadedKey]:
        """Keys whose domain equals or is a parent of the header-From domain (aligned signatures only)."""
        return [k for k in self.keys if domain_allowed(from_domain, [k.domain])]

    def sign(self, content: bytes, from_domain: str) -> bytes:
        """Return ``content`` with DKIM-Signature headers prepended (one per matching key)."""
        signatures: list[bytes] = []
        for k in self.keys_for(from_domain):
            sig = dkim.sign(
                content, k.selector.encode(), k.domain.encode(), k.private,
                canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=k.algorithm.encode(),
                include_headers=list(k.headers),
            )
            signatures.append(sig)
        return b"".join(signatures) + content if signatures else content


def generate_key_file(path: Path, algorithm: str) -> str:
    """Create a key file (used by tests and for local runs); returns the DNS TXT value."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    key = rsa.generate_private_key(65537, 2048) if algorithm == "rsa-sha256" else ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    spec = DkimKey(domain="example.invalid", selector="s", algorithm=algorithm, key_file=path)
    return load_key(spec).public_txt
