"""Tenant and pool sections: who may submit, with which logins and quotas, and from which source addresses."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from smtpinfra_mta.contract import username_problem
from smtpinfra_mta.passwords import hash_problem

from .types import DomainName, Duration, IPAddress, Section


class Credential(Section):
    """One SMTP login of a tenant; only the hash is stored, made with ``hash_password()``."""

    username: str = Field(min_length=1, max_length=256, description="SMTP AUTH username.")
    password_hash: str = Field(
        description="Password hash from smtpinfra_mta.passwords.hash_password(): "
        "'$scrypt$ln=..,r=..,p=..$salt$hash', '$pbkdf2-sha256$rounds$salt$hash' or, for generated passwords of "
        "20+ random characters, '$hmac-sha256$salt$hash'.",
        repr=False,
    )

    @field_validator("username")
    @classmethod
    def _safe_charset(cls, v: str) -> str:
        problem = username_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v

    @field_validator("password_hash")
    @classmethod
    def _known_format(cls, v: str) -> str:
        problem = hash_problem(v)
        if problem is not None:
            raise ValueError(
                f"password_hash is not a supported hash ({problem}); produce it with "
                "smtpinfra_mta.passwords.hash_password()"
            )
        return v


class Quotas(Section):
    """Submission quotas; exceeding one answers 452 (temporary) so clients retry later.

    Counted in fixed UTC windows, like the warm-up caps, not rolling ones: the counters are two integers
    per tenant that survive restarts, and "N per day" then means what providers' and ESPs' daily limits
    mean. The price is a possible burst of up to 2x a quota across a window boundary.
    """

    per_hour: int | None = Field(
        None, ge=0, description="Messages (per recipient) per UTC clock hour (resets on the hour); null = no limit.")
    per_day: int | None = Field(
        None, ge=0, description="Messages (per recipient) per UTC day (resets at 00:00 UTC); null = no limit.")
    per_hour_share: int | None = Field(
        None, ge=0, description="This replica's part of per_hour when the quota is split between the replicas "
        "(the parts of all replicas sum to per_hour); null: per_hour applies to this replica whole.")
    per_day_share: int | None = Field(
        None, ge=0, description="This replica's part of per_day when the quota is split between the replicas; "
        "null: per_day applies to this replica whole.")

    @model_validator(mode="after")
    def _share_within_quota(self) -> Quotas:
        for share, quota, name in ((self.per_hour_share, self.per_hour, "per_hour"),
                                   (self.per_day_share, self.per_day, "per_day")):
            if share is not None and (quota is None or share > quota):
                raise ValueError(f"{name}_share needs {name} and must not exceed it")
        return self


class Tenant(Section):
    """A customer account allowed to submit mail."""

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description="Tenant name (DNS label).")
    credentials: list[Credential] = Field(default_factory=list, description="Inline SMTP logins (hashes only).")
    credentials_file: Path | None = Field(
        None,
        description="File of 'username:password_hash' lines mounted from the tenant's credentials Secret; "
        "merged with 'credentials'. Re-read on config reload.",
    )
    sender_domains: list[DomainName] = Field(
        min_length=1,
        description="Domains the tenant may use in MAIL FROM and in the header From "
        "(exact match or a subdomain of one of them).",
    )
    quotas: Quotas = Field(default_factory=Quotas, description="Per-hour / per-day submission quotas.")
    suspended: bool = Field(False, description="A suspended tenant is refused at MAIL FROM with 550 5.7.1.")
    pool: str = Field(description="Name of the IP pool (see 'pools') this tenant's mail leaves from.")
    # -- campaigns and compliance (the Tenant's spec.suspension, filled by the operator)
    suspended_reason: str = Field(
        "", max_length=300, pattern=r"^[^\r\n]*$",
        description="Why the tenant is suspended; quoted in the 550 5.7.1 reply to its submissions.")
    suspension_window: Duration = Field(
        86400.0, gt=0, le=45 * 86400,
        description="Sliding window of the tenant's sent/bounced/complained figures in /stats "
        "(tenants.<name>.window); the Tenant's spec.suspension.window.")




class SourceIp(Section):
    """A sending address bound for outbound connections, with the EHLO name its PTR record matches."""

    address: IPAddress = Field(description="Local address to bind outbound SMTP connections to.")
    ehlo_name: DomainName = Field(description="Host name sent in EHLO from this address (matches its PTR).")
    quarantined: bool = Field(
        False, description="Listed on a blocklist: nothing leaves from this address; its traffic uses the pool's "
        "other addresses or waits (never bounces). Applied on reload.")
    paused: bool = Field(
        False, description="Paused by the operator: sends nothing, like 'quarantined'. Applied on reload.")


class Peer(Section):
    """Another replica of this server that has a sendable address of the pool (its delivery process)."""

    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:-]+$",
                      description="Host name or address of the peer's delivery process (its pod DNS name).")
    port: int = Field(8081, ge=1, le=65535, description="The peer's delivery HTTP port (http.delivery_port).")
    warm: bool = Field(False, description="The peer's address of this pool has no warm-up caps.")


class Pool(Section):
    """The source IPs of one IpPool assigned to this replica."""

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description="IpPool name.")
    source_ips: list[SourceIp] = Field(min_length=1, description="Source IPs of this pool on this replica.")
    overflow: Literal["wait", "warm-addresses"] = Field(
        "wait",
        description="Traffic beyond the warm-up caps of the pool's warming addresses (those with caps in "
        "throttling.warmup): 'wait' for the next hour/day, or 'warm-addresses' to send it from the pool's "
        "addresses without caps. Never bounced. When this replica has no such address, the excess is "
        "handed to a 'warm' peer.")
    move_when_blocked: bool = Field(
        False, description="When none of this replica's addresses of the pool may send (quarantined or paused), "
        "hand its queued mail for the pool to a peer; false: it waits here.")
    peers: list[Peer] = Field(
        default_factory=list, max_length=256,
        description="Other replicas with a sendable address of this pool, which take mail handed off "
        "(http.handoff_token_file authenticates it). Empty: nothing is handed off.")
