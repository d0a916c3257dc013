"""The fast `hmac-sha256` scheme for generated credentials: round trip, rejection, config contract."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

import pytest

from smtpinfra_mta.config import Credential
from smtpinfra_mta.passwords import MIN_GENERATED_LENGTH, Scheme, hash_password, is_password_hash, verify_password

pytestmark = pytest.mark.mta


def _ab64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=").replace("+", ".")


def test_hmac_round_trip() -> None:
    password = secrets.token_urlsafe(24)
    hashed = hash_password(password, "hmac-sha256")
    assert hashed.startswith("$hmac-sha256$")
    assert password not in hashed
    assert is_password_hash(hashed)
    assert verify_password(password, hashed)
    assert verify_password(password.encode(), hashed)
    # A fresh salt every time: two hashes of one password differ, both verify.
    again = hash_password(password, "hmac-sha256")
    assert again != hashed and verify_password(password, again)


def test_hmac_known_vector() -> None:
    """The format is HMAC-SHA256(key=salt, msg=password), salt and digest in adapted base64."""
    salt, password = b"s" * 16, "x" * 32
    digest = hmac.new(salt, password.encode(), hashlib.sha256).digest()
    assert verify_password(password, f"$hmac-sha256${_ab64(salt)}${_ab64(digest)}")


def test_hmac_rejects_wrong_and_malformed() -> None:
    password = secrets.token_urlsafe(24)
    hashed = hash_password(password, "hmac-sha256")
    assert not verify_password(password[:-1], hashed)
    assert not verify_password(password + "x", hashed)
    assert not verify_password("", hashed)
    _, scheme, salt, digest = hashed.split("$")
    flipped = ("A" if digest[0] != "A" else "B") + digest[1:]
    assert not verify_password(password, f"${scheme}${salt}${flipped}")
    for bad in (f"${scheme}${salt}${digest[:-1]}",  # short digest
                f"${scheme}$AAAA${digest}",  # salt under 16 bytes
                f"${scheme}${salt}",  # no digest
                f"$hmac-sha1${salt}${digest}",  # unknown scheme
                f"${scheme}${salt}${digest}$"):
        assert not is_password_hash(bad), bad
        assert not verify_password(password, bad), bad


def test_hmac_refuses_short_passwords_and_cost() -> None:
    """A chosen (short, guessable) password must go through the slow KDF, never the fast scheme."""
    with pytest.raises(ValueError, match="scrypt"):
        hash_password("x" * (MIN_GENERATED_LENGTH - 1), "hmac-sha256")
    with pytest.raises(ValueError, match="cost"):
        hash_password(secrets.token_urlsafe(24), "hmac-sha256", cost=10)
    assert hash_password("correct horse", cost=10).startswith("$scrypt$")  # the default stays scrypt


def test_mta_config_accepts_hmac_credentials() -> None:
    """The config contract (operator renders, MTA loads) accepts the new format."""
    password = secrets.token_urlsafe(24)
    credential = Credential(username="acme", password_hash=hash_password(password, "hmac-sha256"))
    assert verify_password(password, credential.password_hash)
    with pytest.raises(ValueError):
        Credential(username="acme", password_hash="$hmac-sha256$AAAA$BBBB")


def test_unknown_user_is_checked_against_the_scheme_most_accounts_use(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal for an unknown username costs what a wrong password for a real account costs: with
    generated (HMAC) credentials a fast check, with scrypt accounts a scrypt check."""
    import asyncio

    from smtpinfra_mta.config import parse_config
    from smtpinfra_mta.tenants import TenantDirectory

    calls: list[str] = []

    def spy(password: str | bytes, hashed: str) -> bool:
        calls.append(hashed.split("$")[1])
        return verify_password(password, hashed)

    monkeypatch.setattr("smtpinfra_mta.tenants.verify_password", spy)

    def directory(scheme: Scheme) -> TenantDirectory:
        h = hash_password("a-generated-password-of-enough-length", scheme)
        cfg = parse_config({
            "hostname": "mta.test",
            "tenants": [{"name": "t", "sender_domains": ["t.test"], "pool": "p",
                         "credentials": [{"username": "u", "password_hash": h}]}],
            "pools": [{"name": "p", "source_ips": [{"address": "127.0.0.1", "ehlo_name": "o.t.test"}]}],
            "listeners": {"submission": {"enabled": False}, "implicit_tls": {"enabled": False},
                          "inbound": {"enabled": False}},
            "spool": {"directory": str(tmp_path)},
        })
        return TenantDirectory(cfg)

    schemes: list[Scheme] = ["hmac-sha256", "scrypt"]
    for scheme in schemes:
        calls.clear()
        assert asyncio.run(directory(scheme).authenticate("nobody", b"x")) is None
        assert calls == [scheme]
