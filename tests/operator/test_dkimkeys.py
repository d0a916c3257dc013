"""DKIM keys made and read with the `openssl` command: every format a Secret may hold, bad material refused
with a clear error (never a prompt or a hang), and openssl run once per distinct key."""

from __future__ import annotations

import asyncio
import base64
import stat
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from smtpinfra_api.v1alpha1 import DkimAlgorithm
from smtpinfra_operator.dkimkeys import MAX_KEY_BYTES, DkimKeyError, DkimKeys
from smtpinfra_operator.dns import spki_kind

pytestmark = pytest.mark.operator

MESSAGE = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"


def _spki(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _verifies(private_pem: str, dns_value: str, *, ed: bool) -> bool:
    """dkimpy signs with the generated private key and verifies against the generated TXT value."""
    key = private_pem.encode()
    if ed:
        loaded = serialization.load_pem_private_key(key, password=None)
        key = base64.b64encode(loaded.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                    serialization.NoEncryption()))
    sig = dkim.sign(MESSAGE, b"s1", b"example.test", key, include_headers=[b"from", b"subject"],
                    signature_algorithm=b"ed25519-sha256" if ed else b"rsa-sha256")
    return bool(dkim.verify(sig + MESSAGE, dnsfunc=lambda name, timeout=5: dns_value.encode()))


def test_generated_keys_sign_mail_their_txt_value_verifies() -> None:
    keys = DkimKeys()
    private, value = asyncio.run(keys.generate(DkimAlgorithm.RSA_SHA256, 1024))
    assert private.startswith("-----BEGIN RSA PRIVATE KEY-----")  # PKCS#1: every DKIM signer reads it
    assert value.startswith("v=DKIM1; k=rsa; p=")
    loaded = serialization.load_pem_private_key(private.encode(), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey) and loaded.key_size == 1024
    assert _verifies(private, value, ed=False)

    ed_private, ed_value = asyncio.run(keys.generate(DkimAlgorithm.ED25519_SHA256))
    assert ed_value.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(ed_value.split("p=")[1])) == 32
    assert _verifies(ed_private, ed_value, ed=True)
    # and not the same key twice
    assert asyncio.run(keys.generate(DkimAlgorithm.ED25519_SHA256))[0] != ed_private


@pytest.mark.parametrize("form", ["pkcs8-pem", "pkcs1-pem", "public-pem", "pkcs8-der", "public-der"])
def test_the_public_half_of_every_key_format(form: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    material = {
        "pkcs8-pem": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()),
        "pkcs1-pem": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()),
        "public-pem": key.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo),
        "pkcs8-der": key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()),
        "public-der": _spki(key),
    }[form]
    assert asyncio.run(DkimKeys().public_der(material)) == _spki(key)


def test_an_ed25519_private_key_gives_its_spki() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    der = asyncio.run(DkimKeys().public_der(pem))
    assert der == _spki(key) and spki_kind(der) == "ed25519"


def test_bad_material_is_refused_clearly_and_an_encrypted_key_never_prompts() -> None:
    keys = DkimKeys(timeout=10)
    encrypted = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw"))
    with pytest.raises(DkimKeyError, match="openssl pkey"):
        asyncio.run(keys.public_der(encrypted))  # returns at once: no terminal prompt for the passphrase
    with pytest.raises(DkimKeyError, match="neither a PEM nor a DER"):
        asyncio.run(keys.public_der(b"\x30\x03\x02\x01\x00"))
    with pytest.raises(DkimKeyError, match="openssl pkey"):
        asyncio.run(keys.public_der(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n"))
    with pytest.raises(DkimKeyError, match=f"under {MAX_KEY_BYTES}"):
        asyncio.run(keys.public_der(b"-----BEGIN PRIVATE KEY-----\n" + b"A" * MAX_KEY_BYTES))


def test_openssl_runs_once_per_distinct_key_and_a_hung_one_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    wrapper = tmp_path / "openssl"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> {log}\nexec openssl "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    keys = DkimKeys(str(wrapper))
    one = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    two = ed25519.Ed25519PrivateKey.generate()

    async def derive_many() -> list[bytes]:
        out = []
        for key in (one, two, one, two, one):
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            out.append(await keys.public_der(pem))
        return out

    assert asyncio.run(derive_many()) == [_spki(one), _spki(two), _spki(one), _spki(two), _spki(one)]
    assert log.read_text().split() == ["pkey", "pkey"]

    hung = tmp_path / "hung"
    hung.write_text("#!/bin/sh\nexec sleep 30\n")
    hung.chmod(hung.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(DkimKeyError, match=r"did not finish within 0\.5 s"):
        asyncio.run(DkimKeys(str(hung), timeout=0.5).generate(DkimAlgorithm.ED25519_SHA256))
