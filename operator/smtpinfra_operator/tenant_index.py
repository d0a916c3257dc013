"""Every live Tenant's facts, indexed by sender domain and namespace, for the decisions that look at all tenants.

A tenant's verdict (which of its sender domains overlap whose, who else claims its namespace)
depends on every other Tenant. Recomputed from the whole list on each reconcile, a burst of N
tenants cost N² work (most of the operator's CPU with 1,000 tenants). Kept up to date from the
Tenant informer's events, each question costs a few dictionary lookups per domain.
`domain_conflicts` answers the same question for a whole list through a fresh index, so there is
one rule.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .tenancy import DomainVerdict, Overlap, TenantFacts, ancestors, domain_key, facts_of

__all__ = ["TenantIndex", "domain_conflicts"]

Claim = tuple[str, str]
"""(tenant name, sender domain as written)."""


def _version(body: Mapping[str, Any]) -> int | None:
    value = str((body.get("metadata") or {}).get("resourceVersion") or "")
    return int(value) if value.isdigit() else None


class TenantIndex:
    """Tenants by sender domain (exact, and under each parent domain) and by namespace; thread-safe.

    `observe` is the Tenant informer's listener (it runs in the informer's thread); the queries run
    on the event loop. `refused` says whether a Tenant's status shows another tenant deciding its
    state, so those are found without reading every Tenant (`related`).
    """

    def __init__(self, refused: Callable[[Mapping[str, Any]], bool] = lambda body: False) -> None:
        self._is_refused = refused
        self._lock = threading.Lock()
        self._facts: dict[str, TenantFacts] = {}
        self._exact: dict[str, dict[Claim, None]] = {}
        """Domain key → the claims of exactly that domain (an ordered set)."""
        self._below: dict[str, dict[Claim, None]] = {}
        """Domain key → the claims of its proper subdomains."""
        self._namespaces: dict[str, set[str]] = {}
        self._refused: set[str] = set()
        self._versions: dict[str, int] = {}
        """Per tenant, the resourceVersion last applied (of its deletion too): an older event is ignored."""

    @classmethod
    def of(cls, tenants: Iterable[TenantFacts]) -> TenantIndex:
        """An index of these tenants (pure use: no informer behind it)."""
        index = cls()
        for facts in tenants:
            index._add(facts)
        return index

    @classmethod
    def of_bodies(cls, bodies: Iterable[Mapping[str, Any]],
                  refused: Callable[[Mapping[str, Any]], bool] = lambda body: False) -> TenantIndex:
        """An index of these Tenant objects, as if each had just been observed."""
        index = cls(refused)
        for body in bodies:
            index.observe("ADDED", body)
        return index

    def complete(self, bodies: Iterable[Mapping[str, Any]], synced: bool) -> TenantIndex:
        """This index once its informer has listed (its listeners have heard every Tenant by then);
        before that, one built from `bodies` (what the API listed), so no decision rests on a partial cache."""
        return self if synced else TenantIndex.of_bodies(bodies, self._is_refused)

    # -- keeping it

    def observe(self, type_: str, body: Mapping[str, Any]) -> None:
        """A Tenant informer event: index the tenant's facts as they are now."""
        meta = body.get("metadata") or {}
        name = str(meta.get("name") or "")
        if not name:
            return
        version = _version(body)
        with self._lock:
            held = self._versions.get(name)
            if version is not None and held is not None and version < held:
                return  # a late copy of something the index already moved past
            if version is not None:
                self._versions[name] = version
            facts = None if type_ == "DELETED" else facts_of(body)
            if self._facts.get(name) != facts:
                self._remove(name)
                if facts is not None:
                    self._add(facts)
            if facts is not None and self._is_refused(body):
                self._refused.add(name)
            else:
                self._refused.discard(name)

    def _add(self, facts: TenantFacts) -> None:
        self._facts[facts.name] = facts
        for domain in facts.domains:
            key = domain_key(domain)
            self._exact.setdefault(key, {})[(facts.name, domain)] = None
            for parent in ancestors(key):
                self._below.setdefault(parent, {})[(facts.name, domain)] = None
        self._namespaces.setdefault(facts.namespace, set()).add(facts.name)

    def _remove(self, name: str) -> None:
        facts = self._facts.pop(name, None)
        if facts is None:
            return
        for domain in facts.domains:
            key = domain_key(domain)
            for table, at in [(self._exact, key), *((self._below, p) for p in ancestors(key))]:
                claims = table.get(at)
                if claims is not None:
                    claims.pop((name, domain), None)
                    if not claims:
                        del table[at]
        holders = self._namespaces.get(facts.namespace)
        if holders is not None:
            holders.discard(name)
            if not holders:
                del self._namespaces[facts.namespace]

    # -- questions

    def facts(self) -> list[TenantFacts]:
        """Every indexed tenant, oldest first."""
        with self._lock:
            return sorted(self._facts.values(), key=lambda f: f.order)

    def verdict(self, tenant: TenantFacts) -> DomainVerdict:
        """The overlaps of `tenant`'s sender domains (as given, not as indexed) with every other tenant's.

        A domain overlaps another when it equals it, is a parent or a subdomain of it (the MTA lets
        a tenant send as any subdomain of its domains). Overlaps with older tenants mean it is not
        served; with newer ones, that they are not. Ordered by the other tenant's age, then domain.
        """
        with self._lock:
            found: list[tuple[tuple[str, str], str, str, Overlap]] = []
            for domain in dict.fromkeys(tenant.domains):  # a domain listed twice overlaps once
                key = domain_key(domain)
                near = [self._exact.get(key, {}), self._below.get(key, {}),
                        *(self._exact.get(parent, {}) for parent in ancestors(key))]
                for claims in near:
                    for other, other_domain in claims:
                        facts = self._facts.get(other)
                        if other == tenant.name or facts is None:
                            continue
                        found.append((facts.order, domain_key(other_domain), key,
                                      Overlap(domain, other, other_domain)))
        found.sort(key=lambda f: f[:3])
        older = tuple(o for order, _, _, o in found if order < tenant.order)
        newer = tuple(o for order, _, _, o in found if order > tenant.order)
        return DomainVerdict(with_older=older, with_newer=newer)

    def claimants(self, namespace: str) -> list[TenantFacts]:
        """The tenants whose namespace is `namespace`, oldest first."""
        with self._lock:
            return sorted((self._facts[n] for n in self._namespaces.get(namespace, ())), key=lambda f: f.order)

    def related(self, name: str) -> set[str]:
        """Tenants whose verdict `name`'s appearance, change or removal can change: those whose domains
        overlap its domains now, and those whose status says another tenant decides their state."""
        with self._lock:
            facts = self._facts.get(name)
            refused = set(self._refused)
        related = refused
        if facts is not None:
            verdict = self.verdict(facts)
            related |= {o.other for o in verdict.with_older + verdict.with_newer}
        related.discard(name)
        return related


def domain_conflicts(tenants: Iterable[TenantFacts]) -> dict[str, DomainVerdict]:
    """Per tenant with an overlap, what overlaps whose (pure: `TenantIndex.verdict` over a fresh index).

    Every live tenant's domains count, served or not, so serving one tenant never depends on
    whether a third one is served.
    """
    listed = list(tenants)
    index = TenantIndex.of(listed)
    verdicts = {t.name: index.verdict(t) for t in listed}
    return {name: v for name, v in verdicts.items() if v.with_older or v.with_newer}
