"""Pure acceptance policy: which envelopes and headers a session may use. No I/O here.

Every function returns ``None`` when the item is acceptable, or the complete SMTP reply refusing it,
so the listener code only relays the decision and the rules stay unit-testable.
"""

from __future__ import annotations

import re
from email.headerregistry import Address
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY
from email.utils import getaddresses

from smtpinfra_mta.config import Tenant
from smtpinfra_mta.tenants import domain_allowed, domain_of

_DOMAIN_RE = re.compile(r"^([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")

RELAY_DENIED = "550 5.7.1 Relaying denied"
MAX_RECEIVED_HEADERS = 50


def valid_domain(domain: str) -> bool:
    """A syntactically valid, fully qualified DNS domain (no address literals, no bare hosts)."""
    return bool(_DOMAIN_RE.match(domain.lower().rstrip("."))) and len(domain) <= 253


def split_address(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain.lower().rstrip(".")


def _tricky_local_part(local: str) -> bool:
    """Local parts old MTAs interpreted as routing (``%``-hack, bang paths) or quoted ones hiding '@'."""
    return any(c in local for c in '%!@"\\') or local.startswith("@")


def check_inbound_rcpt(address: str, domains: list[str]) -> str | None:
    """Port 25: only plain addresses in our bounce/FBL domains; everything else is relaying."""
    local, domain = split_address(address)
    if not local or _tricky_local_part(local) or not valid_domain(domain):
        return RELAY_DENIED
    if domain not in domains:
        return RELAY_DENIED
    return None


def check_submission_rcpt(address: str, current_count: int, max_recipients: int) -> str | None:
    """Submission: any valid remote address (the client is authenticated), within the recipient limit."""
    if current_count >= max_recipients:
        return f"452 4.5.3 Too many recipients (at most {max_recipients} per message)"
    local, domain = split_address(address)
    if not local or not valid_domain(domain):
        return "553 5.1.3 Bad destination address syntax"
    return None


def check_mail_from(address: str, tenant: Tenant) -> str | None:
    """Submission: the tenant must be active and the envelope sender in one of its domains."""
    if tenant.suspended:
        return f"550 5.7.1 Account {tenant.name} is suspended; contact your administrator"
    if address in ("", "<>"):
        return "553 5.7.1 A null reverse-path is not allowed on submission"
    local, domain = split_address(address)
    if not local or not valid_domain(domain) or not domain_allowed(domain, tenant.sender_domains):
        return f"553 5.7.1 Sender address <{address}> is not allowed for this account"
    return None


def header_from_addresses(content: bytes) -> list[str] | None:
    """Addresses in the From header(s), or None when the message has no usable From."""
    headers = BytesHeaderParser(policy=SMTP_POLICY).parsebytes(content)
    values = headers.get_all("From") or []
    if len(values) != 1:
        return None
    addrs = [a for _, a in getaddresses([str(values[0])]) if a]
    return addrs or None


def check_header_from(content: bytes, tenant: Tenant) -> str | None:
    """The visible From must also be in the tenant's domains (DMARC alignment, anti-spoofing)."""
    addrs = header_from_addresses(content)
    if addrs is None:
        return "550 5.6.0 The message must have exactly one From header with an address"
    for a in addrs:
        try:
            Address(addr_spec=a)
        except (ValueError, IndexError):
            return f"550 5.6.0 Malformed From header address <{a}>"
        if not domain_allowed(domain_of(a), tenant.sender_domains):
            return f"550 5.7.1 Header From <{a}> is not allowed for this account"
    return None


def header_block(content: bytes) -> bytes:
    """The header section (up to the first empty line), without parsing it."""
    if content.startswith((b"\r\n", b"\n")):
        return b""
    end = content.find(b"\n\r\n")
    end2 = content.find(b"\n\n")
    ends = [e for e in (end, end2) if e >= 0]
    return content[: min(ends) + 1] if ends else content


def count_header(content: bytes, name: bytes) -> int:
    """How many header fields called ``name`` (case-insensitive) the message has; a byte scan, no parsing."""
    block = b"\n" + header_block(content).lower()
    return block.count(b"\n" + name.lower() + b":")


def check_loop(content: bytes) -> str | None:
    """Refuse mail that has passed through too many MTAs (a forwarding loop)."""
    if count_header(content, b"Received") > MAX_RECEIVED_HEADERS:
        return "554 5.4.6 Routing loop detected (too many Received headers)"
    return None
