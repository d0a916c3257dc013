"""MX resolution (dnspython, configurable resolver) and the provider MX rollup.

Outcomes are typed so the scheduler can tell "retry later" (SERVFAIL, timeout) from "this domain
does not take mail" (NXDOMAIN, RFC 7505 null MX), which bounces immediately.
"""

from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from smtpinfra_mta.config import Provider, Resolver, Route


@dataclass(frozen=True)
class MxHost:
    name: str
    preference: int
    addresses: tuple[str, ...]
    port: int | None = None  # a static route's port; None means the configured delivery port


@dataclass(frozen=True)
class MxResult:
    domain: str
    hosts: tuple[MxHost, ...]
    expires_at: float

    @property
    def host_names(self) -> list[str]:
        return [h.name for h in self.hosts]


class DnsTemporaryError(Exception):
    """The lookup failed in a way that may succeed later (timeout, SERVFAIL)."""


class DnsPermanentError(Exception):
    """The domain does not accept mail (NXDOMAIN, null MX, no address at all)."""

    def __init__(self, message: str, status: str = "5.1.2") -> None:
        super().__init__(message)
        self.status = status


def make_resolver(cfg: Resolver) -> dns.asyncresolver.Resolver:
    if cfg.address is None:
        r = dns.asyncresolver.Resolver()
    else:
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = [cfg.address]
        r.port = cfg.port
    r.lifetime = cfg.timeout
    r.timeout = min(cfg.timeout, 2.0)
    return r


class MxResolver:
    """MX lookups with a small TTL-respecting cache (MX answers are shared by many messages)."""

    def __init__(self, cfg: Resolver) -> None:
        self._resolver = make_resolver(cfg)
        self._cache: dict[str, MxResult] = {}

    async def _addresses(self, name: str) -> tuple[tuple[str, ...], float]:
        out: list[str] = []
        ttl = 3600.0
        for rtype in ("A", "AAAA"):
            try:
                ans = await self._resolver.resolve(name, rtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
                raise DnsTemporaryError(f"{rtype} lookup of {name} failed: {exc}") from None
            ttl = min(ttl, float(ans.rrset.ttl if ans.rrset is not None else 300))
            out.extend(r.to_text() for r in ans)
        return tuple(out), ttl

    async def route(self, route: Route) -> MxResult:
        """The next hop of a static route: its IP, or its host name's A/AAAA records (never MX)."""
        key = f"route:{route.domain}"
        cached = self._cache.get(key)
        if cached is not None and cached.expires_at > time.monotonic():
            return cached
        try:
            ipaddress.ip_address(route.host)
            addrs: tuple[str, ...] = (route.host,)
            ttl = 86400.0
        except ValueError:
            addrs, ttl = await self._addresses(route.host)
            if not addrs:
                raise DnsTemporaryError(f"route host {route.host} of {route.domain} has no address") from None
        result = MxResult(route.domain, (MxHost(route.host, 0, addrs, route.port),), time.monotonic() + max(ttl, 5.0))
        self._cache[key] = result
        return result

    async def lookup(self, domain: str) -> MxResult:
        domain = domain.lower().rstrip(".")
        cached = self._cache.get(domain)
        if cached is not None and cached.expires_at > time.monotonic():
            return cached
        if domain.startswith("[") and domain.endswith("]"):
            raise DnsPermanentError(f"address literal {domain} is not routed", "5.1.2")
        try:
            ans = await self._resolver.resolve(domain, "MX", search=False)
            ttl = float(ans.rrset.ttl if ans.rrset is not None else 300)
            records = sorted(((r.preference, r.exchange.to_text(omit_final_dot=True).lower()) for r in ans),
                             key=lambda pr: (pr[0], random.random()))
        except dns.resolver.NXDOMAIN:
            raise DnsPermanentError(f"domain {domain} does not exist", "5.1.2") from None
        except dns.resolver.NoAnswer:
            records = [(0, domain)]  # RFC 5321 5.1: implicit MX
            ttl = 300.0
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise DnsTemporaryError(f"MX lookup of {domain} failed: {exc}") from None
        if len(records) == 1 and records[0][1] in ("", "."):
            raise DnsPermanentError(f"domain {domain} does not accept mail (null MX)", "5.1.10")
        hosts: list[MxHost] = []
        for pref, name in records:
            try:
                ipaddress.ip_address(name)
                addrs: tuple[str, ...] = ()  # an IP in an MX record is invalid; skip it
                a_ttl = ttl
            except ValueError:
                addrs, a_ttl = await self._addresses(name)
            ttl = min(ttl, a_ttl)
            if addrs:
                hosts.append(MxHost(name, pref, addrs))
        if not hosts:
            raise DnsTemporaryError(f"no MX host of {domain} has an address")
        result = MxResult(domain, tuple(hosts), time.monotonic() + max(ttl, 5.0))
        self._cache[domain] = result
        if len(self._cache) > 50_000:
            self._cache.clear()
        return result


def provider_for(mx_hosts: list[str], providers: list[Provider]) -> str | None:
    """KumoMTA's MX rollup: the provider whose suffixes cover every MX host of the destination."""
    for p in providers:
        if mx_hosts and all(any(h == s or h.endswith("." + s) for s in p.mx_suffixes) for h in mx_hosts):
            return p.name
    return None
