"""GDPR erasure: an address leaves every store the MTA keeps; only a salted hash stays suppressed.

What the MTA holds of a recipient after delivery: the tenant's suppression entry (clear), and reports
quoting it in the inbound quarantine. Delivered messages leave the spool when they are finished, and the
per-campaign counters and idempotency log hold only digests. The hash keeps the address suppressed: the
check compares the clear and the hashed form. The salt is derived per tenant from one server secret, so
all replicas (sharing a PostgreSQL store) compute the same hash and a hash says nothing across tenants.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from smtpinfra_mta.campaign_contract import erasure_hash
from smtpinfra_mta.config import MtaConfig
from smtpinfra_mta.outcomes import OutcomeStore
from smtpinfra_mta.suppression import Hasher, SuppressionStore, normalise
from smtpinfra_mta.verp import load_or_create_key

log = logging.getLogger(__name__)
SECRET_FILE = "erasure.key"
QUARANTINE_DIR = "quarantine"


def tenant_salt(secret: bytes, tenant: str) -> bytes:
    """The tenant's salt: a hash of one tenant never matches the same address of another tenant."""
    return hmac.new(secret, b"erasure\0" + tenant.encode("utf-8"), hashlib.sha256).digest()


def make_hasher(secret: bytes) -> Hasher:
    def hasher(tenant: str, address: str) -> str:
        return erasure_hash(tenant_salt(secret, tenant), address)

    return hasher


def load_secret(cfg: MtaConfig) -> bytes:
    """The server secret from ``unsubscribe.erasure_salt_file``, else one generated in the spool directory."""
    path = cfg.unsubscribe.erasure_salt_file
    if path is not None:
        secret = path.read_bytes().strip()
        if len(secret) < 16:
            raise ValueError(f"{path}: the erasure secret must have at least 16 bytes")
        return secret
    cfg.spool.directory.mkdir(parents=True, exist_ok=True)
    try:
        return load_or_create_key(cfg.spool.directory / SECRET_FILE)
    except FileExistsError:  # the other process of separate_process created it just now
        return load_or_create_key(cfg.spool.directory / SECRET_FILE)


@dataclass(frozen=True)
class Erased:
    """What an erasure found and removed (counts only: the answer must not repeat the address)."""

    tenant: str
    suppression_entry: bool
    quarantined_reports: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def scrub_quarantine(directory: Path, address: str) -> int:
    """Delete quarantined reports that mention ``address`` (any case); returns how many."""
    needle = normalise(address).encode("utf-8")
    removed = 0
    try:
        paths = sorted(directory.glob("*.eml"))
    except OSError:
        return 0
    for eml in paths:
        note = eml.with_suffix(".json")
        try:
            hit = any(needle in p.read_bytes().lower() for p in (eml, note) if p.exists())
        except OSError:
            continue
        if hit:
            for p in (eml, note):
                p.unlink(missing_ok=True)
            removed += 1
    return removed


ADDRESS_STATS_FILE = "addresses.sqlite"
"""The per-source-address figures (`addrstats`), which remember who each address last sent to."""


def scrub_address_stats(path: Path, address: str) -> int:
    """Forget which source address last sent to ``address`` (late reports for it then count nowhere)."""
    if not path.exists():
        return 0
    db = sqlite3.connect(str(path), timeout=5)
    try:
        db.execute("PRAGMA secure_delete=ON")
        removed = db.execute("DELETE FROM recipients WHERE rcpt=?", (address.strip().lower(),)).rowcount
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed
    except sqlite3.Error:  # no such table yet: nothing remembered
        return 0
    finally:
        db.close()


async def erase(store: SuppressionStore, spool_dir: Path, tenant: str, address: str,
                outcomes: OutcomeStore | None = None) -> Erased:
    """Erase ``address`` of ``tenant``: the hash is written first, so the address is never unsuppressed."""
    if "@" not in address or any(c in address for c in "\r\n\0"):
        raise ValueError("not an address")
    had = await store.erase(tenant, address)
    removed = scrub_quarantine(spool_dir / QUARANTINE_DIR, address)
    if outcomes is not None:
        outcomes.erase(address)
    scrub_address_stats(spool_dir / ADDRESS_STATS_FILE, address)
    log.info("address erased", extra={"tenant": tenant, "suppression_entry": had, "quarantined_reports": removed})
    return Erased(tenant=tenant, suppression_entry=had, quarantined_reports=removed)
