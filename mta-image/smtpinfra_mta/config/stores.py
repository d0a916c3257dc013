"""Where a replica keeps state: the spool, the suppression database and the shared quota counters."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from .types import Duration, Section


class Spool(Section):
    directory: Path = Field(Path("/var/spool/smtp-infra"), description="Spool directory (the replica's PVC).")
    fsync: bool = Field(True, description="fsync before acknowledging; only tests may turn this off.")
    group_commit_window: Duration = Field(
        0.002, ge=0, le=1, description="How long a commit waits to batch other sessions' messages into one fsync."
    )
    idempotency_retention: Duration = Field(
        86400.0, gt=0, description="How long a (tenant, idempotency key) pair is remembered after acceptance."
    )


class Suppression(Section):
    url: str = Field(
        "sqlite:///var/spool/smtp-infra/suppression.db",
        description="Database for suppression lists: 'sqlite:///path' (embedded default) or "
        "'postgresql://user@host/db' (shared by replicas; password from PGPASSWORD / a mounted file).",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not v.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("suppression url must start with 'sqlite:///' or 'postgresql://'")
        return v


class QuotaStore(Section):
    url: str | None = Field(
        None,
        description="PostgreSQL database the replicas share for exact quota counters ('postgresql://user@host/db'; "
        "password from PGPASSWORD / a mounted file). Null: each replica counts in its spool and enforces its "
        "share of each quota (Quotas.per_hour_share / per_day_share).",
    )

    @field_validator("url")
    @classmethod
    def _postgres_only(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("quota_store url must start with 'postgresql://'")
        return v
