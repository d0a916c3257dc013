"""Fixtures for DNS tests: one real Knot DNS server per session, plus DKIM keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from smtpinfra_operator.dns import Rfc2136Provider

from .knot import FORWARD_ZONE, KEY_NAME, KEY_SECRET, REVERSE_ZONE, KnotServer


@pytest.fixture(scope="session")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    """knotd on 127.0.10.53 and a free port, authoritative for example.test and 10.0.127.in-addr.arpa.

    Updates and AXFR are allowed with the TSIG key only. Tests use disjoint names (one
    sub-domain of example.test each) and addresses, so they share the server safely.
    """
    server = KnotServer(tmp_path_factory.mktemp("knot"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def provider(knot: KnotServer) -> Rfc2136Provider:
    """The RFC 2136 provider as the operator would configure it for the Knot server."""
    return Rfc2136Provider(knot.address, [FORWARD_ZONE, REVERSE_ZONE], key_name=KEY_NAME, secret=KEY_SECRET,
                           port=knot.port, timeout=2.0)


@pytest.fixture(scope="session")
def dkim_keys() -> dict[str, bytes]:
    """Private keys (PEM, PKCS#8) for the DKIM tests: two RSA selectors and one Ed25519."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    return {
        "rsa-a": pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "rsa-b": pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "ed": pem(ed25519.Ed25519PrivateKey.generate()),
    }


@pytest.fixture(scope="session")
def dkim_public(dkim_keys: dict[str, bytes]) -> dict[str, bytes]:
    """The public halves of `dkim_keys` as SubjectPublicKeyInfo DER, what DkimPublicKey holds."""
    from cryptography.hazmat.primitives import serialization

    return {name: serialization.load_pem_private_key(pem, password=None).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) for name, pem in dkim_keys.items()}
