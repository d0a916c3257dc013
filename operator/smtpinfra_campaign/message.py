"""One recipient's message: the rendered parts plus every header the compliance rules require.

Built with the stdlib `email` package (policy SMTP: CRLF, folded headers). Every message carries
`List-Unsubscribe` (the signed https link and the mailto), `List-Unsubscribe-Post` (RFC 8058),
`Feedback-ID`, a deterministic `Message-ID` and `X-Idempotency-Key` (all from the contract the
MTA reads them back with), and the postal address and unsubscribe link in each body.
"""

from __future__ import annotations

import html as html_lib
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate

from smtpinfra_mta import campaign_contract as contract

POLICY = SMTP.clone(max_line_length=998)
"""CRLF; headers folded only past RFC 5322's 998: a long token-like value (the idempotency key) folded at 78
would start its line with a space that readers which do not unfold it keep."""


class SenderRefused(ValueError):
    """The campaign's From is not in one of the tenant's domains."""


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().lower().rstrip(".")


def check_sender_domain(address: str, tenant_domains: list[str]) -> None:
    """Refuse a From outside the tenant's sender domains (a subdomain of one is allowed, as the MTA allows)."""
    domain = domain_of(address)
    for allowed in tenant_domains:
        allowed = allowed.strip().lower().rstrip(".")
        if domain == allowed or domain.endswith("." + allowed):
            return
    raise SenderRefused(f"spec.sender.address {address!r}: domain {domain!r} is not one of the tenant's sender "
                        f"domains ({', '.join(tenant_domains) or 'none'})")


@dataclass(frozen=True)
class CampaignIdentity:
    """What names the campaign in every message."""

    name: str
    namespace: str
    uid: str
    tenant: str


@dataclass(frozen=True)
class Compliance:
    """The campaign-wide header and footer inputs."""

    from_address: str
    from_name: str | None
    reply_to: str | None
    postal_address: str
    unsubscribe_base_url: str
    unsubscribe_mailto: str
    unsubscribe_key: bytes


@dataclass(frozen=True)
class Identifiers:
    message_id: str
    idempotency_key: str


def identifiers(campaign: CampaignIdentity, address: str, from_address: str) -> Identifiers:
    """The Message-ID and idempotency key of one recipient: the same on every attempt."""
    return Identifiers(
        message_id=contract.message_id(campaign.uid, address, domain_of(from_address)),
        idempotency_key=contract.idempotency_key(campaign.uid, address),
    )


def text_footer(postal: str, link: str) -> str:
    return f"\n\n--\n{postal}\nUnsubscribe: {link}\n"


def html_footer(postal: str, link: str) -> str:
    return (f'\n<hr><p style="font-size:small">{html_lib.escape(postal)}<br>'
            f'<a href="{html_lib.escape(link, quote=True)}">Unsubscribe</a></p>\n')


def build_message(campaign: CampaignIdentity, compliance: Compliance, address: str, subject: str,
                  text: str | None, html: str | None) -> EmailMessage:
    """The complete message for `address`; text and HTML become multipart/alternative.

    The object-model form, kept as the reference `wire.MessageWriter` (what the sender sends, written
    without the object model for speed) is tested against.
    """
    ids = identifiers(campaign, address, compliance.from_address)
    token = contract.sign_unsubscribe(compliance.unsubscribe_key, campaign.tenant, campaign.namespace,
                                      campaign.name, address)
    link = contract.unsubscribe_url(compliance.unsubscribe_base_url, token)
    msg = EmailMessage(policy=POLICY)
    local, _, dom = compliance.from_address.rpartition("@")
    msg["From"] = Address(display_name=compliance.from_name or "", username=local, domain=dom)
    msg["To"] = address
    if compliance.reply_to:
        msg["Reply-To"] = compliance.reply_to
    msg["Subject"] = subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = ids.message_id
    # the MTA's inbound listener unsubscribes a message whose subject carries the token (the mailto: form)
    msg["List-Unsubscribe"] = f"<{link}>, <mailto:{compliance.unsubscribe_mailto}?subject=unsubscribe%20{token}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg[contract.FEEDBACK_ID_HEADER] = contract.feedback_id(campaign.name, campaign.tenant, campaign.namespace)
    msg[contract.IDEMPOTENCY_HEADER] = ids.idempotency_key
    text_body = (text or "") + text_footer(compliance.postal_address, link) if text is not None else None
    html_body = (html or "") + html_footer(compliance.postal_address, link) if html is not None else None
    if text_body is not None:
        msg.set_content(text_body, cte="quoted-printable")
        if html_body is not None:
            msg.add_alternative(html_body, subtype="html", cte="quoted-printable")
    elif html_body is not None:
        msg.set_content(html_body, subtype="html", cte="quoted-printable")
    return msg
