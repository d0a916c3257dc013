"""Traffic shaping: effective limits per egress path, rate limiters, warm-up caps, automation.

An egress path is (source IP, site); the site is the destination's provider when its MX hosts roll
up to one (so gmail.com and googlemail.com share Google's limits), otherwise the recipient domain.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from smtpinfra_mta.addrstats import AddressStats
from smtpinfra_mta.clock import seconds_to_next_window
from smtpinfra_mta.config import AutomationRule, ThrottleRule, Throttling

_PRECEDENCE = {"default": 0, "provider": 1, "domain": 2, "source_ip": 3}


@dataclass(frozen=True)
class Shaping:
    connection_limit: int = 10
    max_message_rate: float | None = None
    max_connection_rate: float | None = None
    max_deliveries_per_connection: int = 100


def site_key(domain: str, provider: str | None) -> str:
    return f"provider:{provider}" if provider else f"domain:{domain}"


def effective_shaping(rules: list[ThrottleRule], domain: str, provider: str | None, source_ip: str) -> Shaping:
    """Merge matching rules field by field; more specific scopes override less specific ones."""
    matching = [
        r for r in rules
        if r.scope == "default"
        or (r.scope == "domain" and r.match == domain)
        or (r.scope == "provider" and provider is not None and r.match == provider)
        or (r.scope == "source_ip" and r.match == source_ip)
    ]
    values: dict[str, object] = {}
    for r in sorted(matching, key=lambda r: _PRECEDENCE[r.scope]):
        for name in ("connection_limit", "max_message_rate", "max_connection_rate", "max_deliveries_per_connection"):
            v = getattr(r, name)
            if v is not None:
                values[name] = v
    return Shaping(**values)  # type: ignore[arg-type]


class RateLimiter:
    """GCRA with a burst of one: events are spaced at least 1/rate apart, per key. Never exceeds the rate."""

    def __init__(self) -> None:
        self._next: dict[str, float] = {}

    def reserve(self, key: str, rate: float, now: float | None = None) -> float:
        """Reserve the next slot; returns how many seconds the caller must wait before using it."""
        now = time.monotonic() if now is None else now
        slot = max(now, self._next.get(key, now))
        self._next[key] = slot + 1.0 / rate
        return slot - now


@dataclass
class AutomationState:
    until: float
    action: str
    rule: str
    rate: float | None = None


@dataclass
class Automation:
    """Active suspensions / slow-downs triggered by remote replies (KumoMTA shaping automation)."""

    rules: list[AutomationRule]
    active: dict[str, AutomationState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._compiled = [(r, re.compile(r.regex)) for r in self.rules]

    def observe(self, reply: str, domain: str, site: str, source_ip: str, now: float | None = None) -> list[str]:
        """Apply rules matching ``reply``; returns the names of rules that fired."""
        now = time.time() if now is None else now
        fired = []
        for rule, rx in self._compiled:
            if not rx.search(reply):
                continue
            key = {"domain": f"domain:{domain}", "provider": site, "source_ip": f"ip:{source_ip}"}[rule.scope]
            self.active[key] = AutomationState(now + rule.duration, rule.action, rule.name, rule.max_message_rate)
            fired.append(rule.name)
        return fired

    def state(self, key: str, now: float | None = None) -> AutomationState | None:
        now = time.time() if now is None else now
        st = self.active.get(key)
        if st is not None and st.until <= now:
            del self.active[key]
            return None
        return st

    def suspended_for(self, keys: list[str], now: float | None = None) -> float:
        """Seconds until every suspension on ``keys`` has lapsed (0 when none applies)."""
        now = time.time() if now is None else now
        wait = 0.0
        for k in keys:
            st = self.state(k, now)
            if st is not None and st.action == "suspend":
                wait = max(wait, st.until - now)
        return wait

    def rate_cap(self, keys: list[str], now: float | None = None) -> float | None:
        rates = [st.rate for k in keys if (st := self.state(k, now)) and st.action == "throttle" and st.rate]
        return min(rates) if rates else None


class WarmupGate:
    """Warm-up caps per source IP (and per provider), enforced from the persisted per-address figures.

    The figures (:class:`AddressStats`) are the same the operator's gates read, kept in the spool, so a
    restart does not reset today's count. Windows are hours and days of the configured time zone.
    """

    def __init__(self, cfg: Throttling, stats: AddressStats) -> None:
        self._caps = cfg.warmup
        self.stats = stats
        self._capped = {cap.source_ip for cap in cfg.warmup if cap.per_day is not None or cap.per_hour is not None}

    def capped(self, source_ip: str) -> bool:
        """Whether the address is warming (has any cap); addresses without caps are warm."""
        return source_ip in self._capped

    def room(self, source_ip: str, provider: str | None, now: float | None = None) -> tuple[int | None, float]:
        """(messages that still fit now, None when unlimited; seconds until the blocking window ends if 0)."""
        now = self.stats.clock.now() if now is None else now
        tz = self.stats.tz
        fits: int | None = None
        wait = 0.0
        for cap in self._caps:
            if cap.source_ip != source_ip or (cap.provider is not None and cap.provider != provider):
                continue
            scope = None if cap.provider is None else (provider or "other")
            for window, limit in (("day", cap.per_day), ("hour", cap.per_hour)):
                if limit is None:
                    continue
                left = max(limit - self.stats.sent(source_ip, scope, window, now), 0)  # type: ignore[arg-type]
                fits = left if fits is None else min(fits, left)
                if left == 0:
                    wait = max(wait, seconds_to_next_window(window, now, tz))  # type: ignore[arg-type]
        return fits, wait

    def wait_time(self, source_ip: str, provider: str | None, n: int = 1, now: float | None = None) -> float:
        """0 when at least one more message fits under every cap, else seconds until the blocking window ends."""
        fits, wait = self.room(source_ip, provider, now)
        return 0.0 if fits is None or fits > 0 else wait
