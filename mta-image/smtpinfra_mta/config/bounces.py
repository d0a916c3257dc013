"""The bounces section: DSN identity, VERP keys and the bounded parsing of inbound reports."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from .types import DomainName, Duration, Section


class Bounces(Section):
    return_path_domain: DomainName | None = Field(
        None, description="Domain of the MTA's own address used as From of DSNs (MAILER-DAEMON@<domain>), and "
        "of the VERP return paths. Must also be in listeners.inbound.domains to receive bounces/complaints.",
    )
    verp: bool = Field(
        True,
        description="Send tenant mail with a per-recipient return path 'bounces+<token>@<return_path_domain>' "
        "(when return_path_domain is set and received on port 25), so asynchronous DSNs and ARF complaints are "
        "matched to tenant and recipient; hard bounces and complaints then join the tenant's suppression list. "
        "Each recipient is sent in its own transaction.",
    )
    verp_key_file: Path | None = Field(
        None,
        description="HMAC key authenticating VERP tokens (mount the same Secret in every replica). Null: a key is "
        "generated once in the spool directory (fine for one replica). 'verp_key_files' wins when set.",
    )
    # --- inbound reports: VERP keys shared by the replicas, bounded parsing, quarantine ---------------
    verp_key_files: list[Path] = Field(
        default_factory=list,
        description="VERP keys shared by every replica (the operator mounts its '<server>-verp' Secret): the "
        "first existing file signs, every existing one verifies, so return paths signed before a rotation "
        "still match. Missing files are skipped (no 'previous' key before the first rotation). Re-read on reload.",
    )
    report_max_bytes: int = Field(
        128 * 1024, ge=4096, le=32 * 1024 * 1024,
        description="Only this many leading bytes of an inbound report are parsed: the DSN/ARF parts and the "
        "quoted headers come first, and a bound keeps hostile input from costing unbounded parse time.",
    )
    report_parse_timeout: Duration = Field(
        5.0, gt=0, le=300,
        description="Time limit for parsing one inbound report in a worker process; a report that takes longer "
        "is quarantined and the worker replaced.",
    )
    report_workers: int = Field(1, ge=1, le=8, description="Worker processes parsing inbound reports.")
    report_retry_limit: Duration = Field(
        3600.0, gt=0,
        description="How long a report whose suppression insert fails is retried before it is quarantined.",
    )
    quarantine_max_bytes: int = Field(
        256 * 1024 * 1024, ge=0,
        description="Size bound of the spool's quarantine/ area (inbound reports that could not be handled, kept "
        "for inspection); the oldest entries go first. 0 keeps none.",
    )
    quarantine_max_age: Duration = Field(
        7 * 86400.0, gt=0, description="Quarantined reports older than this are deleted.")

    @model_validator(mode="after")
    def _one_key_source(self) -> Bounces:
        if self.verp_key_file is not None and self.verp_key_files:
            raise ValueError("set verp_key_file or verp_key_files, not both")
        return self
