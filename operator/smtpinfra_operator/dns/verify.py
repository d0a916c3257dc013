"""Verification: do resolvers answer what we want, and does each sending IP have FCrDNS?

Queries go to the given resolver addresses directly (no system resolver, no cache), so the
authoritative server answers for "published" and recursive resolvers for "verified".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import dns.exception
import dns.resolver

from .records import Record, normalize_name, reverse_name


class VerifyState(StrEnum):
    """Result of checking one record set."""

    VERIFIED = "Verified"
    """Every resolver answers exactly the desired values."""
    PUBLISHED = "Published"
    """The first (authoritative) resolver answers them; some others do not yet."""
    CONFLICT = "Conflict"
    """The authoritative resolver answers different values."""
    ERROR = "Error"
    """Not found at the authoritative resolver, or it could not be asked."""


@dataclass(frozen=True)
class VerifyResult:
    record: Record
    state: VerifyState
    message: str


@dataclass(frozen=True)
class FcrdnsResult:
    """Forward-confirmed reverse DNS of one address."""

    address: str
    ok: bool
    names: tuple[str, ...]
    message: str


class LookupFailed(Exception):
    """A query could not be answered (timeout, refused, SERVFAIL)."""


def parse_nameserver(spec: str) -> tuple[str, int]:
    """"1.2.3.4", "1.2.3.4:5353", "[::1]:5353" or "::1" → (address, port)."""
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if spec.count(":") == 1:
        host, _, port = spec.partition(":")
        return host, int(port)
    return spec, 53


def resolver_for(spec: str, timeout: float = 3.0) -> dns.resolver.Resolver:
    """A resolver that asks only `spec`, with no search list and no cache."""
    host, port = parse_nameserver(spec)
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [host]
    r.port = port
    r.lifetime = timeout
    r.timeout = timeout
    return r


def _canon(rtype: str, answer: dns.resolver.Answer) -> set[str]:
    return {Record("x.", rtype, 0, (rd.to_text(),)).values[0] for rd in answer}


def lookup(resolver: dns.resolver.Resolver, name: str, rtype: str) -> set[str] | None:
    """The canonical values at (name, rtype), None when the name or type does not exist."""
    try:
        answer = resolver.resolve(normalize_name(name) + ".", rtype, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return None
    except (dns.exception.Timeout, dns.resolver.NoNameservers, OSError) as exc:
        raise LookupFailed(f"{exc.__class__.__name__}: {exc}") from None
    if answer.rrset is None:
        return None
    return _canon(rtype, answer)


def _texts(rtype: str, values: set[str]) -> set[str]:
    if rtype != "TXT":
        return values
    return set(Record("x.", "TXT", 0, tuple(values)).texts())


def verify(records: Sequence[Record], resolvers: Sequence[str], *, timeout: float = 3.0) -> list[VerifyResult]:
    """Check each record set through `resolvers` (authoritative first; "host" or "host:port").

    TXT values compare as joined text, so a resolver's different string split is still equal;
    TTLs are not compared (caches count them down).
    """
    if not resolvers:
        raise ValueError("verify needs at least one resolver address")
    rs = [(spec, resolver_for(spec, timeout)) for spec in resolvers]
    out = []
    for rec in records:
        want = _texts(rec.rtype, set(rec.values))
        state, message = VerifyState.VERIFIED, f"{len(rs)} resolver(s) answer the desired values"
        lagging = []
        for i, (spec, res) in enumerate(rs):
            try:
                got = lookup(res, rec.name, rec.rtype)
            except LookupFailed as exc:
                if i == 0:
                    state, message = VerifyState.ERROR, f"{spec}: {exc}"
                    break
                lagging.append(f"{spec}: {exc}")
                continue
            have = _texts(rec.rtype, got) if got is not None else None
            if have == want:
                continue
            if i == 0:
                if have is None:
                    state, message = VerifyState.ERROR, f"{spec}: no {rec.rtype} record at {rec.name}"
                else:
                    state, message = VerifyState.CONFLICT, f"{spec} answers {sorted(have)} instead of {sorted(want)}"
                break
            lagging.append(f"{spec}: {'nothing' if have is None else sorted(have)}")
        if state == VerifyState.VERIFIED and lagging:
            state, message = VerifyState.PUBLISHED, "not yet everywhere: " + "; ".join(lagging)
        out.append(VerifyResult(rec, state, message))
    return out


def fcrdns(address: str, resolver: str, *, expected_name: str | None = None, timeout: float = 3.0) -> FcrdnsResult:
    """PTR of `address` → name(s) → A/AAAA containing `address` again (and the name expected).

    Mailbox providers reject or penalise mail from an address without it.
    """
    ip = ipaddress.ip_address(address)
    res = resolver_for(resolver, timeout)
    try:
        ptrs = lookup(res, reverse_name(address), "PTR")
    except LookupFailed as exc:
        return FcrdnsResult(address, False, (), f"PTR lookup failed: {exc}")
    if not ptrs:
        return FcrdnsResult(address, False, (), f"no PTR record for {address}")
    names = tuple(sorted(normalize_name(p) for p in ptrs))
    if expected_name is not None and normalize_name(expected_name) not in names:
        return FcrdnsResult(address, False, names, f"PTR of {address} is {', '.join(names)}, not {expected_name}")
    rtype = "AAAA" if ip.version == 6 else "A"
    seen: list[str] = []
    for name in names:
        try:
            addrs = lookup(res, name, rtype) or set()
        except LookupFailed as exc:
            return FcrdnsResult(address, False, names, f"{rtype} lookup of {name} failed: {exc}")
        if any(ipaddress.ip_address(a) == ip for a in addrs):
            return FcrdnsResult(address, True, names, f"{address} → {name} → {address}")
        seen.append(f"{name} → {', '.join(sorted(addrs)) or 'nothing'}")
    return FcrdnsResult(address, False, names, f"PTR does not resolve back to {address}: {'; '.join(seen)}")
