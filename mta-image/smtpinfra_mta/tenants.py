"""Tenant directory: who may log in, and which sender domains and pool they may use.

Pure lookups over the validated config (plus mounted credential files); the SMTP layer asks it
questions and turns the answers into replies.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from smtpinfra_mta.config import MtaConfig, Tenant
from smtpinfra_mta.contract import credential_problem
from smtpinfra_mta.passwords import Scheme, hash_password, verify_password

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Account:
    """A resolved login: the tenant it belongs to and its password hash."""

    username: str
    tenant: str
    password_hash: str = field(repr=False)


def read_credentials_file(path: Path) -> list[tuple[str, str]]:
    """Parse ``username:hash`` lines (``#`` comments and blank lines ignored).

    A line failing :func:`credential_problem` (bad charset, unknown scheme, cost over the bounds, bytes
    that are not UTF-8) is skipped with a warning, so it locks out only its own login.
    """
    out: list[tuple[str, str]] = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            log.warning("credentials file line skipped", extra={"file": str(path), "line": lineno,
                                                                "reason": "not UTF-8"})
            continue
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        problem = credential_problem(user.strip(), hashed.strip()) if sep else "no ':' between username and hash"
        if problem is not None:
            log.warning("credentials file line skipped", extra={"file": str(path), "line": lineno, "reason": problem})
            continue
        out.append((user.strip(), hashed.strip()))
    return out


def domain_of(address: str) -> str:
    """The lower-cased domain of an address (everything after the last '@')."""
    return address.rpartition("@")[2].lower().rstrip(".")


def domain_allowed(domain: str, allowed: list[str]) -> bool:
    """Exact match or a subdomain of an allowed domain (``news.example.com`` under ``example.com``)."""
    d = domain.lower().rstrip(".")
    return any(d == a or d.endswith("." + a) for a in allowed)


class TenantDirectory:
    """Accounts and tenants from one config generation; rebuilt on reload."""

    def __init__(self, cfg: MtaConfig) -> None:
        self._tenants: dict[str, Tenant] = {t.name: t for t in cfg.tenants}
        self._accounts: dict[str, Account] = {}
        for t in cfg.tenants:
            creds = [(c.username, c.password_hash) for c in t.credentials]
            if t.credentials_file is not None:
                try:
                    creds += read_credentials_file(t.credentials_file)
                except OSError as exc:
                    log.error("cannot read credentials file", extra={"tenant": t.name, "error": str(exc)})
            for user, hashed in creds:
                if user in self._accounts and self._accounts[user].tenant != t.name:
                    log.error("username claimed by two tenants; ignored", extra={"tenant": t.name})
                    continue
                self._accounts[user] = Account(user, t.name, hashed)
        # An unknown username is checked against a throwaway hash of the scheme most accounts use, so a
        # refusal takes as long as a wrong password would (fast HMAC for generated credentials, scrypt else).
        schemes = Counter(a.password_hash.split("$")[1] for a in self._accounts.values())
        self._dummy_scheme = schemes.most_common(1)[0][0] if schemes else "scrypt"
        # Successful verifications, keyed by a digest of (username, password, hash), so repeated logins
        # by campaign jobs do not pay scrypt each time. Only a one-way digest is kept, never the password.
        self._verified: set[bytes] = set()

    def tenant(self, name: str) -> Tenant | None:
        return self._tenants.get(name)

    async def authenticate(self, username: str, password: bytes) -> Tenant | None:
        """Check a login; the hash runs in a thread so a slow KDF does not stall other sessions."""
        account = self._accounts.get(username)
        if account is None:
            # Same cost as a real check so user enumeration by timing is not trivial.
            await asyncio.to_thread(verify_password, password, _dummy_hash(self._dummy_scheme))
            return None
        key = hashlib.sha256(b"\0".join([username.encode(), password, account.password_hash.encode()])).digest()
        if key not in self._verified:
            ok = await asyncio.to_thread(verify_password, password, account.password_hash)
            if not ok:
                return None
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified.add(key)
        return self._tenants.get(account.tenant)


@functools.cache
def _dummy_hash(scheme: str) -> str:
    """A hash of a random password nobody knows, made once per scheme with the default cost."""
    known: dict[str, Scheme] = {"scrypt": "scrypt", "pbkdf2-sha256": "pbkdf2-sha256", "hmac-sha256": "hmac-sha256"}
    return hash_password(secrets.token_urlsafe(32), known.get(scheme, "scrypt"))
