"""Which Tenant may use which sender domains and namespace, and whether its credentials are usable.

Pure decisions over what the informers hold (Tenants, Namespaces, credentials Secrets). The
Tenant handler publishes them and the SmtpServer handler serves only the tenants they allow, so
a Tenant's Ready and the servers' configs never disagree. Tenants are read from their raw specs
(the API server validated them): the decisions run over every Tenant on every reconcile.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import idna

from smtpinfra_api.meta import GROUP
from smtpinfra_mta.config import credential_problem

from .builders import tenant as build

OPERATOR_NAMESPACE_ENV = ("SMTP_INFRA_OPERATOR_NAMESPACE", "POD_NAMESPACE")
"""Where the operator learns its own namespace (the chart sets POD_NAMESPACE from the pod's)."""


def operator_namespace() -> str | None:
    """The operator's namespace from the environment (read when asked, so tests can set it)."""
    for name in OPERATOR_NAMESPACE_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


@dataclass(frozen=True)
class TenantFacts:
    """What the decisions need of one Tenant."""

    name: str
    uid: str
    created: str
    """creationTimestamp (RFC 3339, which sorts as time); the older tenant keeps what both claim."""
    namespace: str
    domains: tuple[str, ...]

    @property
    def order(self) -> tuple[str, str]:
        """Older first; the name breaks ties of the same second."""
        return (self.created, self.name)


def facts_of(body: Mapping[str, Any]) -> TenantFacts | None:
    """A live Tenant's facts from its raw object; None when it is being deleted or malformed."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    domains = spec.get("senderDomains")
    if meta.get("deletionTimestamp") or not isinstance(domains, list) \
            or not all(isinstance(d, str) for d in domains):
        return None
    name = meta.get("name", "")
    return TenantFacts(name=name, uid=meta.get("uid", ""), created=meta.get("creationTimestamp", ""),
                       namespace=spec.get("namespace") or f"tenant-{name}", domains=tuple(domains))


def all_facts(bodies: Iterable[Mapping[str, Any]]) -> list[TenantFacts]:
    """Facts of every live, well-formed Tenant, oldest first."""
    return sorted((f for f in map(facts_of, bodies) if f is not None), key=lambda f: f.order)


# ------------------------------------------------------------------------------------ sender domains


def domain_key(domain: str) -> str:
    """The form domains are compared in: lower case, no trailing dot, IDNA A-labels."""
    text = domain.strip().rstrip(".").lower()
    if text.isascii():
        return text
    try:
        return idna.encode(text, uts46=True).decode("ascii")
    except idna.IDNAError:
        return text  # not a valid name: compared as written, never equal to a valid one


def ancestors(key: str) -> list[str]:
    """Proper parent domains of a key: a.b.c → b.c, c."""
    labels = key.split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels))]


@dataclass(frozen=True)
class Overlap:
    """One of a tenant's sender domains overlapping one of another tenant's."""

    domain: str
    other: str
    other_domain: str

    def describe(self) -> str:
        a, b = domain_key(self.domain), domain_key(self.other_domain)
        if a == b:
            return f"sender domain {self.domain} belongs to Tenant {self.other}"
        how = "a subdomain" if a.endswith("." + b) else "a parent"
        return f"sender domain {self.domain} is {how} of {self.other_domain}, which belongs to Tenant {self.other}"


@dataclass(frozen=True)
class DomainVerdict:
    """A tenant's overlaps: with older tenants (it is not served) and with newer ones (it keeps serving)."""

    with_older: tuple[Overlap, ...] = ()
    with_newer: tuple[Overlap, ...] = ()


MAX_DESCRIBED = 10
"""Overlaps spelt out in a message; a condition message is capped (32 KiB) and read by people."""


def describe_overlaps(overlaps: Iterable[Overlap]) -> str:
    """The first MAX_DESCRIBED overlaps, and how many more there are."""
    listed = list(overlaps)
    text = "; ".join(o.describe() for o in listed[:MAX_DESCRIBED])
    return text + (f"; and {len(listed) - MAX_DESCRIBED} more" if len(listed) > MAX_DESCRIBED else "")


# ------------------------------------------------------------------------------------ namespaces


@dataclass(frozen=True)
class Refusal:
    """Why a tenant may not be given something; `reason` is the Ready reason."""

    reason: str
    message: str


NamespaceUse = Literal["create", "owned", "adopted"]
"""create: absent, the operator creates it owned by the Tenant; owned: it carries the Tenant's
ownerReference (uid); adopted: it existed and an administrator labelled it for the tenant."""


def _tenant_owners(namespace: Mapping[str, Any]) -> list[dict[str, Any]]:
    refs = (namespace.get("metadata") or {}).get("ownerReferences") or []
    return [r for r in refs if r.get("kind") == "Tenant" and str(r.get("apiVersion", "")).startswith(GROUP + "/")]


def namespace_claim(tenant: TenantFacts, namespace: Mapping[str, Any] | None, others: Iterable[TenantFacts],
                    operator_ns: str | None) -> NamespaceUse | Refusal:
    """Whether the tenant may use its namespace, and how.

    "Owned" is the Tenant's uid in the namespace's ownerReferences: nobody inside the namespace
    can write that, and a Tenant of the same name made again later has another uid. A namespace
    that existed before the Tenant is refused unless an administrator adopted it beforehand by
    labelling it `smtpinfra.com/tenant=<tenant>`; the operator never labels or owns it itself.
    """
    name = tenant.namespace
    if operator_ns and name == operator_ns:
        return Refusal("NamespaceNotAllowed", f"namespace {name} is the operator's own namespace")
    if name == "default" or name.startswith("kube-"):
        return Refusal("NamespaceNotAllowed", f"namespace {name} is reserved for the cluster (default, kube-*)")
    if namespace is not None:
        owners = _tenant_owners(namespace)
        if any(r.get("uid") == tenant.uid for r in owners):
            return "owned"
        if owners:
            return Refusal("NamespaceOwnedByAnotherTenant",
                           f"namespace {name} belongs to Tenant {owners[0].get('name')}")
        labels = (namespace.get("metadata") or {}).get("labels") or {}
        if labels.get(build.TENANT_LABEL) == tenant.name:
            return "adopted"
        return Refusal("NamespaceNotOwned",
                       f"namespace {name} existed before Tenant {tenant.name}; an administrator may adopt it "
                       f"for this tenant with the label {build.TENANT_LABEL}={tenant.name}")
    older = [o for o in others if o.namespace == name and o.name != tenant.name and o.order < tenant.order]
    if older:
        return Refusal("NamespaceOwnedByAnotherTenant", f"namespace {name} is claimed by Tenant {older[0].name}, "
                                                        "created earlier")
    return "create"


# ------------------------------------------------------------------------------------ credentials


@dataclass(frozen=True)
class Credentials:
    """A tenant's checked `username:hash` line, or why its Secret cannot be used."""

    line: str | None = None
    problem: Refusal | None = field(default=None)


def _decoded(secret: Mapping[str, Any], key: str) -> str | Refusal:
    raw = (secret.get("data") or {}).get(key)
    if not raw:
        return Refusal("InvalidCredentials", f"key {key} of Secret {build.CREDENTIALS_SECRET} is missing or empty")
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return Refusal("InvalidCredentials", f"key {key} of Secret {build.CREDENTIALS_SECRET} is not UTF-8 text")


def check_credentials(tenant: str, secret: Mapping[str, Any]) -> Credentials:
    """The tenant's credentials Secret checked before any of it reaches an MTA config.

    The Secret lives in the tenant's namespace, where the tenant may write: a bad value must
    cost that tenant its logins, never the server its config. The username must be the one the
    operator generated (the tenant's name), so a tenant cannot take another tenant's login name.
    Messages name the key and never repeat its value.
    """
    username = _decoded(secret, "username")
    if isinstance(username, Refusal):
        return Credentials(problem=username)
    password_hash = _decoded(secret, "passwordHash")
    if isinstance(password_hash, Refusal):
        return Credentials(problem=password_hash)
    problem = credential_problem(username, password_hash)
    if problem is not None:
        return Credentials(problem=Refusal("InvalidCredentials", f"Secret {build.CREDENTIALS_SECRET} (keys "
                                                                 f"username, passwordHash): {problem}"))
    if username != build.username(tenant):
        return Credentials(problem=Refusal("InvalidCredentials",
                                           f"key username of Secret {build.CREDENTIALS_SECRET} must be the "
                                           f"tenant's name, {tenant}"))
    return Credentials(line=f"{username}:{password_hash}\n")


def secret_belongs(secret: Mapping[str, Any], tenant: str) -> bool:
    """Whether a credentials Secret is labelled for this tenant (a Secret another tenant left in a
    namespace it used before is not this one's)."""
    return ((secret.get("metadata") or {}).get("labels") or {}).get(build.TENANT_LABEL) == tenant
