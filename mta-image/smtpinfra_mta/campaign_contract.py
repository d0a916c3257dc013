"""What a campaign sender and the MTA agree on: the campaign tag, unsubscribe tokens, erasure hashes.

The sender (a Job running `smtp-infra campaign send`) writes these into each message; the MTA
reads them back to attribute outcomes to a campaign, to serve one-click unsubscribes and to check
suppressions by hash. Stdlib only, so both images can import it without pulling the other's
dependencies.

- Campaign tag: the `Feedback-ID` header (Gmail's `a:b:c:SenderId` form) is
  `<campaign>:<tenant>:<namespace>:smtpinfra`. The MTA trusts it only for the tenant that
  authenticated the submission (a tenant cannot count mail against another tenant's campaign).
- Idempotency: `X-Idempotency-Key: <campaign uid>/<sha256 of the normalised address>` and a
  deterministic `Message-ID`, so a retried submission is recognised by the MTA's idempotency log.
- Unsubscribe token: `<payload>.<mac>`, both base64url without padding; payload is
  `v1\\0<tenant>\\0<namespace>/<campaign>\\0<address>` (UTF-8), mac the first 16 bytes of
  HMAC-SHA256 over the payload with the *sender key* of that tenant and namespace: a key derived
  from the server's unsubscribe key (`sender_key`). Only the derived key leaves the server's
  namespace (into the campaign's), so a tenant that reads it can sign links for its own
  recipients only, never another tenant's. The link is `<base url>/unsubscribe/<token>`.
- Erasure: a suppressed address may be kept only as `sha256:<hex of HMAC-SHA256(salt, address)>`,
  the salt per tenant; the suppression check compares both forms.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

FEEDBACK_ID_HEADER = "Feedback-ID"
FEEDBACK_ID_SENDER = "smtpinfra"
IDEMPOTENCY_HEADER = "X-Idempotency-Key"
UNSUBSCRIBE_PATH = "/unsubscribe/"
TOKEN_VERSION = "v1"
MAC_BYTES = 16
MAX_TOKEN_LENGTH = 2048
"""Longer tokens are refused before any decoding (a URL path from the Internet)."""
HASH_PREFIX = "sha256:"


def normalise_address(address: str) -> str:
    """The form addresses are compared, hashed and ledgered in: trimmed, domain lower-cased."""
    local, sep, domain = address.strip().rpartition("@")
    return f"{local}@{domain.lower()}" if sep else address.strip()


def feedback_id(campaign: str, tenant: str, namespace: str) -> str:
    """The Feedback-ID value of a campaign's messages."""
    return f"{campaign}:{tenant}:{namespace}:{FEEDBACK_ID_SENDER}"


@dataclass(frozen=True)
class CampaignTag:
    campaign: str
    tenant: str
    namespace: str


def parse_feedback_id(value: str) -> CampaignTag | None:
    """The campaign a Feedback-ID names, or None if it is not one of ours (or malformed)."""
    parts = value.strip().split(":")
    if len(parts) != 4 or parts[3] != FEEDBACK_ID_SENDER or not all(parts[:3]) or len(value) > 512:
        return None
    return CampaignTag(campaign=parts[0], tenant=parts[1], namespace=parts[2])


def address_digest(address: str) -> str:
    """Unsalted SHA-256 of the normalised address: for idempotency keys and Message-IDs only."""
    return hashlib.sha256(normalise_address(address).encode("utf-8")).hexdigest()


def idempotency_key(campaign_uid: str, address: str) -> str:
    """The X-Idempotency-Key of one recipient's message of one campaign."""
    return f"{campaign_uid}/{address_digest(address)}"


def message_id(campaign_uid: str, address: str, domain: str) -> str:
    """A Message-ID that is the same on every attempt for this (campaign, recipient)."""
    return f"<{campaign_uid}.{address_digest(address)[:32]}@{domain}>"


def erasure_hash(salt: bytes, address: str) -> str:
    """What remains of an erased address: a salted hash the suppression check can still match."""
    mac = hmac.new(salt, normalise_address(address).encode("utf-8"), hashlib.sha256).hexdigest()
    return HASH_PREFIX + mac


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Unsubscribe:
    tenant: str
    namespace: str
    campaign: str
    address: str


def sender_key(server_key: bytes, tenant: str, namespace: str) -> bytes:
    """The key a campaign of `tenant` in `namespace` signs its unsubscribe links with (hex, ASCII)."""
    label = "\0".join([TOKEN_VERSION, "sender", tenant, namespace]).encode("utf-8")
    return hmac.new(server_key, label, hashlib.sha256).hexdigest().encode("ascii")


def sign_unsubscribe(key: bytes, tenant: str, namespace: str, campaign: str, address: str) -> str:
    """The token of one recipient's unsubscribe link; `key` is the sender key (`sender_key`)."""
    payload = "\0".join([TOKEN_VERSION, tenant, f"{namespace}/{campaign}", normalise_address(address)]).encode()
    mac = hmac.new(key, payload, hashlib.sha256).digest()[:MAC_BYTES]
    return f"{_b64(payload)}.{_b64(mac)}"


def verify_unsubscribe(keys: list[bytes], token: str) -> Unsubscribe | None:
    """The request a token stands for, if the sender key of the tenant and namespace it names, derived
    from one of the server's `keys` (current and previous), signed it; else None."""
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        return None
    payload_text, mac_text = token.split(".")
    try:
        payload, mac = _unb64(payload_text), _unb64(mac_text)
        version, tenant, campaign_ref, address = payload.decode("utf-8").split("\0")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    namespace, sep, campaign = campaign_ref.partition("/")
    if version != TOKEN_VERSION or not sep or not (tenant and namespace and campaign and "@" in address):
        return None
    if not any(hmac.compare_digest(hmac.new(sender_key(k, tenant, namespace), payload, hashlib.sha256)
                                   .digest()[:MAC_BYTES], mac) for k in keys):
        return None
    return Unsubscribe(tenant=tenant, namespace=namespace, campaign=campaign, address=address)


def unsubscribe_url(base_url: str, token: str) -> str:
    """The HTTPS link for List-Unsubscribe and the body."""
    return base_url.rstrip("/") + UNSUBSCRIBE_PATH + token
