"""Tenant-provided credentials: the validator the operator calls, and the MTA's own use of it."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from smtpinfra_mta.config import ConfigError, credential_problem, parse_config
from smtpinfra_mta.passwords import hash_password, verify_password
from smtpinfra_mta.tenants import read_credentials_file

pytestmark = pytest.mark.mta

GOOD = hash_password(secrets.token_urlsafe(24), "hmac-sha256")
SALT_HASH = "c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43


@pytest.mark.parametrize("username", ["acme", "acme-news", "a.b_c+d@example.com", "A1"])
def test_acceptable_credentials(username: str) -> None:
    assert credential_problem(username, GOOD) is None
    assert credential_problem(username, hash_password("pw", cost=10)) is None
    assert credential_problem(username, hash_password("pw", "pbkdf2-sha256", cost=1000)) is None


@pytest.mark.parametrize("username", ["", "a b", "a:b", "a\nb", "a\rb", "a\0b", "-lead", ".lead", "é", "x" * 129,
                                      "a/b", "a;b", "a\tb"])
def test_bad_usernames_are_named(username: str) -> None:
    problem = credential_problem(username, GOOD)
    assert problem is not None and "username" in problem


@pytest.mark.parametrize("hashed, words", [
    ("", "empty"),
    ("plaintext-password", "not a supported"),
    (f"$scrypt$ln=14,r=999,p=999${SALT_HASH}", "r=999"),
    (f"$scrypt$ln=14,r=8,p=999${SALT_HASH}", "p=1..16"),
    (f"$scrypt$ln=20,r=8,p=1${SALT_HASH}", "MiB"),
    (f"$scrypt$ln=17,r=8,p=16${SALT_HASH}", "default"),
    (f"$scrypt$ln=99,r=8,p=1${SALT_HASH}", "outside"),
    (f"$pbkdf2-sha256$999999999${SALT_HASH}", "rounds"),
    (f"$pbkdf2-sha256$10${SALT_HASH}", "rounds"),
    (GOOD + "\nmallory:" + GOOD, "one line"),
    ("$md5$abc$def", "not a supported"),
])
def test_bad_hashes_are_named(hashed: str, words: str) -> None:
    problem = credential_problem("acme", hashed)
    assert problem is not None and words in problem, problem


def test_over_cost_hash_never_verifies() -> None:
    """Even if such a line reached the MTA, verification refuses it before running the KDF."""
    assert not verify_password("pw", f"$scrypt$ln=14,r=999,p=999${SALT_HASH}")
    assert not verify_password("pw", f"$pbkdf2-sha256$999999999${SALT_HASH}")


def test_credentials_file_skips_bad_lines_keeps_good(tmp_path: Path) -> None:
    f = tmp_path / "creds"
    f.write_bytes(b"\n".join([
        b"# comment",
        f"acme:{GOOD}".encode(),
        f"evil:$scrypt$ln=14,r=999,p=999${SALT_HASH}".encode(),
        f"bad user:{GOOD}".encode(),
        b"\xff\xfe:" + GOOD.encode(),
        f"other:{GOOD}".encode(),
    ]))
    assert [u for u, _ in read_credentials_file(f)] == ["acme", "other"]


def test_inline_credential_over_cost_is_a_config_error(tmp_path: Path) -> None:
    cfg = {"hostname": "mta.test", "listeners": {"submission": {"enabled": False},
                                                  "inbound": {"enabled": False}},
           "pools": [{"name": "p", "source_ips": [{"address": "127.0.0.21", "ehlo_name": "o.test"}]}],
           "tenants": [{"name": "t", "sender_domains": ["t.test"], "pool": "p",
                        "credentials": [{"username": "t", "password_hash":
                                         f"$scrypt$ln=14,r=999,p=999${SALT_HASH}"}]}]}
    with pytest.raises(ConfigError, match="password_hash"):
        parse_config(cfg)
