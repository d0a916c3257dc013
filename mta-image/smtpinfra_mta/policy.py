"""Pure acceptance policy: which envelopes and headers a session may use. No I/O here.

Every function returns ``None`` when the item is acceptable, or the complete SMTP reply refusing it,
so the listener code only relays the decision and the rules stay unit-testable.
"""

from __future__ import annotations

import re

from smtpinfra_mta.config import Tenant
from smtpinfra_mta.headers import Headers, display_shows_address, mailboxes
from smtpinfra_mta.tenants import domain_allowed

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


def suspended_reply(tenant: Tenant) -> str:
    """The refusal of a suspended tenant's submissions; the reason comes from the Tenant (no CR/LF)."""
    reason = " ".join(tenant.suspended_reason.split()) or "contact your administrator"
    return f"550 5.7.1 Tenant {tenant.name} is suspended: {reason}"


def check_mail_from(address: str, tenant: Tenant) -> str | None:
    """Submission: the tenant must be active and the envelope sender in one of its domains."""
    if tenant.suspended:
        return suspended_reply(tenant)
    if address in ("", "<>"):
        return "553 5.7.1 A null reverse-path is not allowed on submission"
    local, domain = split_address(address)
    if not local or not valid_domain(domain) or not domain_allowed(domain, tenant.sender_domains):
        return f"553 5.7.1 Sender address <{address}> is not allowed for this account"
    return None


_IDENTITY_FIELDS = (("From", True), ("Sender", True), ("Reply-To", False))
"""Identity fields, and whether their address must be in the tenant's domains (a Reply-To may be anyone's)."""


def check_identity(headers: Headers, tenant: Tenant) -> tuple[str | None, str]:
    """(refusal or None, the header-From domain) for a submitted message, read from the raw fields.

    Exactly one From with exactly one address in the tenant's domains; at most one Sender (one address,
    the tenant's) and one Reply-To (well-formed). Any defect is refused with 5.7.x naming the field, since
    receivers and DMARC evaluators may read a malformed identity differently from us.
    """
    from_domain = ""
    for name, own in _IDENTITY_FIELDS:
        values = headers.get_all(name)
        if name == "From" and len(values) != 1:
            return f"550 5.7.1 Header From: the message must have exactly one (it has {len(values)})", ""
        if len(values) > 1:
            return f"550 5.7.1 Header {name}: the message may have at most one (it has {len(values)})", ""
        if not values:
            continue
        try:
            boxes = mailboxes(values[0])
        except ValueError as exc:
            return f"550 5.7.1 Header {name} is malformed: {exc}", ""
        if name != "Reply-To" and len(boxes) != 1:
            return f"550 5.7.1 Header {name} must hold exactly one address (it has {len(boxes)})", ""
        for box in boxes:
            if own and not domain_allowed(box.domain, tenant.sender_domains):
                return f"550 5.7.1 Header {name} <{box.address}> is not allowed for this account", ""
            shown = display_shows_address(box)
            if own and shown is not None and not domain_allowed(shown, tenant.sender_domains):
                return (f"550 5.7.1 Header {name}: the display name shows an address in {shown}, "
                        "which is not allowed for this account"), ""
        if name == "From":
            from_domain = boxes[0].domain
    return None, from_domain


def header_block(content: bytes) -> bytes:
    """The header section (up to the first empty line), without parsing it."""
    if content.startswith((b"\r\n", b"\n")):
        return b""
    end = content.find(b"\n\r\n")
    # A bare-LF blank line counts only before the CRLF one: searched there alone, not through a whole
    # 100 KB body that has none.
    end2 = content.find(b"\n\n", 0, end + 2 if end >= 0 else len(content))
    ends = [e for e in (end, end2) if e >= 0]
    return content[: min(ends) + 1] if ends else content


def count_header(content: bytes, name: bytes) -> int:
    """How many header fields called ``name`` (case-insensitive) the message has; a byte scan, no parsing."""
    block = b"\n" + header_block(content).lower()
    return block.count(b"\n" + name.lower() + b":")


LOOP_REPLY = "554 5.4.6 Routing loop detected (too many Received headers)"


def check_loop(content: bytes) -> str | None:
    """Refuse mail that has passed through too many MTAs (a forwarding loop)."""
    if count_header(content, b"Received") > MAX_RECEIVED_HEADERS:
        return LOOP_REPLY
    return None
