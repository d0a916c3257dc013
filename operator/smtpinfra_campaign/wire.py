"""One recipient's message as bytes, written directly: the campaign's fixed headers encoded once.

`message.build_message` (the stdlib `email` object model) costs milliseconds per message under load,
which made the sender the slowest part of the campaign path. `MessageWriter` produces the same message
(the same headers, parts and decoded bodies; `tests/campaign/test_wire.py` compares both parsed back):

* the campaign-wide headers (From, Reply-To, Feedback-ID, List-Unsubscribe-Post) are
  folded once by the `email` policy;
* per recipient, a header value that is plain printable ASCII and fits in 998 octets is written as
  is; anything else (non-ASCII names or subjects, very long values) goes through the same policy, so
  RFC 2047 encoded words and folding stay the library's;
* bodies are quoted-printable by `binascii.b2a_qp` (C, lines <= 76), CRLF line endings;
* the multipart boundary starts with ``=_``, which quoted-printable output never contains, so it
  cannot collide with a body.
"""

from __future__ import annotations

import binascii
import re
import secrets
from email.headerregistry import Address
from email.utils import formatdate

from smtpinfra_mta import campaign_contract as contract

from .message import POLICY, CampaignIdentity, Compliance, html_footer, identifiers, text_footer

MAX_LINE = 998
_PLAIN = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
"""Printable ASCII words separated by single spaces: what the policy writes back unchanged."""
_ADDR_SPEC = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")
"""A plain addr-spec (no display name, quotes or comments), written unchanged by the policy."""


def fold_header(name: str, value: str) -> bytes:
    """The header as the `email` policy writes it: folded, encoded words for non-ASCII, CRLF."""
    folded: str = POLICY.fold(name, POLICY.header_store_parse(name, value)[1])
    return folded.encode("ascii")


def header(name: str, value: str, plain: re.Pattern[str] = _PLAIN) -> bytes:
    """`name: value` CRLF when the policy would write it unchanged, else `fold_header`."""
    if len(name) + 2 + len(value) <= MAX_LINE and plain.fullmatch(value):
        return f"{name}: {value}\r\n".encode("ascii")
    return fold_header(name, value)


def qp_body(body: str) -> bytes:
    """UTF-8, line breaks normalised (as `email.contentmanager` does), quoted-printable, CRLF."""
    normal = b"\n".join(body.encode("utf-8").splitlines()) + b"\n"
    return binascii.b2a_qp(normal, istext=True).replace(b"\n", b"\r\n")


def _part_headers(subtype: str) -> bytes:
    return (f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n").encode("ascii")


class MessageWriter:
    """Writes the messages of one campaign; built once per run."""

    def __init__(self, campaign: CampaignIdentity, compliance: Compliance) -> None:
        self.campaign = campaign
        self.compliance = compliance
        local, _, dom = compliance.from_address.rpartition("@")
        fixed = [fold_header("From", str(Address(display_name=compliance.from_name or "", username=local,
                                                 domain=dom)))]
        self.after_to = b"".join([fold_header("Reply-To", compliance.reply_to)] if compliance.reply_to else [])
        fixed_tail = [
            header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            header(contract.FEEDBACK_ID_HEADER,
                   contract.feedback_id(campaign.name, campaign.tenant, campaign.namespace)),
        ]
        self.head = b"".join(fixed)
        self.tail = b"".join(fixed_tail)
        self.text_part = _part_headers("plain")
        self.html_part = _part_headers("html")

    def write(self, address: str, subject: str, text: str | None, html: str | None) -> bytes:
        """The complete message for `address`; text and HTML become multipart/alternative."""
        c, cp = self.campaign, self.compliance
        ids = identifiers(c, address, cp.from_address)
        token = contract.sign_unsubscribe(cp.unsubscribe_key, c.tenant, c.namespace, c.name, address)
        link = contract.unsubscribe_url(cp.unsubscribe_base_url, token)
        out = [
            self.head,
            header("To", address, _ADDR_SPEC),
            self.after_to,
            header("Subject", subject),
            header("Date", formatdate(usegmt=True)),
            header("Message-ID", ids.message_id),
            header("List-Unsubscribe",
                   f"<{link}>, <mailto:{cp.unsubscribe_mailto}?subject=unsubscribe%20{token}>"),
            header(contract.IDEMPOTENCY_HEADER, ids.idempotency_key),
            self.tail,
        ]
        parts = []
        if text is not None:
            parts.append((self.text_part, qp_body(text + text_footer(cp.postal_address, link))))
        if html is not None:
            parts.append((self.html_part, qp_body(html + html_footer(cp.postal_address, link))))
        if parts:
            out.append(b"MIME-Version: 1.0\r\n")
        if len(parts) == 1:
            out += [parts[0][0], b"\r\n", parts[0][1]]
        elif parts:
            boundary = f"=_{secrets.token_hex(16)}".encode("ascii")
            out.append(b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n\r\n')
            # the CRLF before each delimiter belongs to the delimiter (RFC 2046 5.1.1), not to the body
            for i, (head, body) in enumerate(parts):
                out += [b"\r\n--" if i else b"--", boundary, b"\r\n", head, b"\r\n", body]
            out += [b"\r\n--", boundary, b"--\r\n"]
        else:
            out.append(b"\r\n")
        return b"".join(out)
