"""Value types every section of the MTA config shares: durations, rates, domain names, addresses."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

DEFAULT_CONFIG_PATH = Path("/etc/smtp-infra/mta.yaml")

_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|m|min|h|hour|d|day)\s*$")
_RATE_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}


class ConfigError(Exception):
    """The config file is missing, not YAML, or fails validation; the message says what to fix."""


def _parse_duration(value: Any) -> Any:
    """Accept seconds as a number or a string such as ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '30s', '5m', '2h', '1d'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"invalid duration {value!r}: use a number of seconds or e.g. '30s', '5m', '2h', '1d'")
        return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    return value


def _parse_rate(value: Any) -> Any:
    """Accept ``"100/h"`` style rates (KumoMTA's notation) and normalise them to messages per second."""
    if isinstance(value, bool):
        raise ValueError("a rate must look like '100/h' (units: s, m, h, d) or a number per second")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _RATE_RE.match(value)
        if not m:
            raise ValueError(f"invalid rate {value!r}: use e.g. '10/s', '300/m', '1000/h', '50000/d'")
        return float(m.group(1)) / _RATE_UNITS[m.group(2)]
    return value


def normalise_domain(value: Any) -> Any:
    if isinstance(value, str):
        d = value.strip().rstrip(".").lower()
        try:
            d = d.encode("idna").decode("ascii") if any(ord(c) > 127 for c in d) else d
        except UnicodeError as exc:
            raise ValueError(f"invalid domain name {value!r}") from exc
        if not _DOMAIN_RE.match(d):
            raise ValueError(f"invalid domain name {value!r}")
        return d
    return value


Duration = Annotated[float, BeforeValidator(_parse_duration), Field(ge=0)]
"""Seconds; YAML may say ``30``, ``"30s"``, ``"5m"``, ``"2h"`` or ``"1d"``."""
Rate = Annotated[float, BeforeValidator(_parse_rate), Field(gt=0)]
"""Events per second; YAML may say ``"100/h"``, ``"10/s"``, ``"5000/d"``."""
DomainName = Annotated[str, BeforeValidator(normalise_domain)]
IPAddress = Annotated[str, BeforeValidator(lambda v: str(ipaddress.ip_address(v)) if isinstance(v, str) else v)]


class Section(BaseModel):
    """A part of the config: unknown fields are errors (a typo fails loudly), values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
