"""The HTTP sections: metrics/health/stats ports, one-click unsubscribe and the MTA-STS policy served."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from .types import Duration, IPAddress, Section


class Unsubscribe(Section):
    """One-click unsubscribes (RFC 8058) served by the MTA pods for the campaigns they send."""

    keys: list[Path] = Field(
        default_factory=list,
        description="Files holding the unsubscribe token keys (the current one first, then previous ones still "
        "accepted), mounted from the server's Secret. Empty: /unsubscribe/ answers 404.")
    listener: Literal["http"] = Field(
        "http", description="The HTTP listener serving /unsubscribe/<token>: the pods' http.port listener.")
    erasure_salt_file: Path | None = Field(
        None,
        description="Secret from which each tenant's erasure-hash salt is derived (shared by the replicas); "
        "null: a key generated once in the spool directory (one replica only).")


class Http(Section):
    bind: IPAddress = Field("0.0.0.0", description="Address of the metrics/health HTTP server.")
    port: int = Field(8080, ge=1, le=65535, description="Port of /metrics, /healthz, /readyz and /stats.")
    delivery_port: int = Field(
        8081, ge=1, le=65535,
        description="Port of the delivery process's /metrics, /healthz and /stats (delivery.separate_process).",
    )
    mta_sts_port: int | None = Field(
        None, ge=1, le=65535,
        description="HTTPS port (certificate from 'tls') that serves only /.well-known/mta-sts.txt, for "
        "https://mta-sts.<domain>/ (RFC 8461 section 3.3); null: no HTTPS listener. Needs 'mta_sts' and 'tls'.",
    )
    stats_token_file: Path | None = Field(
        None,
        description="File holding the bearer token /stats requires ('Authorization: Bearer <token>'), mounted "
        "from a Secret only the operator reads; re-read per request. Null: /stats is open (local runs only).",
    )
    handoff_token_file: Path | None = Field(
        None,
        description="File holding the bearer token replicas of one server present when they hand each other "
        "queued mail (POST /handoff on the delivery port); re-read per request. Null: no hand-off, either way.",
    )
    max_connections: int = Field(
        128, ge=1, le=100_000, description="Concurrent connections per HTTP listener; more are closed at once.")
    request_timeout: Duration = Field(
        10.0, gt=0, le=300, description="Time a client has to send its whole request (and TLS handshake).")


_STS_MODES = ("enforce", "testing", "none")
_STS_MAX_AGE = 31557600  # RFC 8461 section 3.2: at most one year
_STS_MX_RE = re.compile(r"^(\*\.)?([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class MtaSts(Section):
    """The MTA-STS policy (RFC 8461) the operator computed; the HTTP endpoints serve it verbatim."""

    policy: str = Field(
        min_length=1, max_length=65536,
        description="The policy file served at /.well-known/mta-sts.txt (RFC 8461 section 3.2): 'version: STSv1', "
        "'mode', one 'mx' line per allowed MX host and 'max_age', one 'key: value' per line. Its id is "
        "published in the _mta-sts TXT record, so it is served exactly as given.",
    )

    @field_validator("policy")
    @classmethod
    def _valid_policy(cls, v: str) -> str:
        if len(v.encode()) > 65536:
            raise ValueError("the MTA-STS policy must not exceed 64 KiB (RFC 8461 section 3.3)")
        fields: dict[str, list[str]] = {}
        for line in v.replace("\r\n", "\n").split("\n"):
            if not line.strip():
                continue
            key, sep, value = line.partition(":")
            if not sep or not key.strip():
                raise ValueError(f"MTA-STS policy line {line!r} is not 'key: value'")
            fields.setdefault(key.strip(), []).append(value.strip())
        for key in ("version", "mode", "max_age"):
            if len(fields.get(key, [])) != 1:
                raise ValueError(f"the MTA-STS policy needs exactly one '{key}' line")
        if fields["version"] != ["STSv1"]:
            raise ValueError("MTA-STS policy version must be 'STSv1'")
        mode = fields["mode"][0]
        if mode not in _STS_MODES:
            raise ValueError(f"MTA-STS mode must be one of {', '.join(_STS_MODES)}, not {mode!r}")
        max_age = fields["max_age"][0]
        if not (max_age.isascii() and max_age.isdigit() and len(max_age) <= 10 and int(max_age) <= _STS_MAX_AGE):
            raise ValueError(f"MTA-STS max_age must be a number of seconds up to {_STS_MAX_AGE}, not {max_age!r}")
        mx = fields.get("mx", [])
        if not mx and mode != "none":
            raise ValueError(f"an MTA-STS policy in mode {mode!r} needs at least one 'mx' line")
        for pattern in mx:
            if not _STS_MX_RE.match(pattern.lower()):
                raise ValueError(f"MTA-STS mx {pattern!r} is not a host name or a '*.' wildcard pattern")
        return v
