"""Bounce classification and RFC 3464 delivery status notifications. Pure functions.

Classes (what the operator's reputation logic and the suppression list act on):

* ``hard``       — the address does not exist / domain does not accept mail (suppress the recipient)
* ``soft``       — temporary trouble at the recipient (mailbox full, try later)
* ``policy``     — refused by content / policy / authentication rules (fix the message or DNS)
* ``reputation`` — refused because of the sending IP's or domain's reputation (slow down, warm up)
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from email.utils import formatdate, make_msgid
from typing import Literal

BounceClass = Literal["hard", "soft", "policy", "reputation"]

_ENHANCED_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPUTATION_RE = re.compile(
    r"(blocklist|blacklist|block list|black list|spamhaus|barracuda|spamcop|\bRBL\b|DNSBL|reputation|"
    r"\[TS0[1-4]\]|TSS0\d|poor reputation|listed|too many complaints|rate limit|unsolicited|bulk mail)",
    re.IGNORECASE,
)
_POLICY_RE = re.compile(
    r"(spf|dkim|dmarc|policy|not authorized|authentication|content|spam|virus|rejected for|message refused|"
    r"unauthenticated)",
    re.IGNORECASE,
)
_HARD_RE = re.compile(
    r"(user unknown|no such user|unknown user|mailbox unavailable|does not exist|no mailbox|invalid recipient|"
    r"recipient rejected|address rejected|unknown recipient|not found|disabled|inactive)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Classification:
    bounce_class: BounceClass
    status: str  # enhanced status code, e.g. "5.1.1"
    permanent: bool


def enhanced_status(code: int, text: str) -> str:
    """The enhanced status code in the reply text, or one derived from the basic code."""
    m = _ENHANCED_RE.search(text)
    if m and m.group(1) == str(code)[0]:
        return ".".join(m.groups())
    return f"{str(code)[0]}.0.0"


def classify(code: int, text: str) -> Classification:
    """Classify a remote reply (basic code + text). Reputation and policy signals outrank the code class."""
    status = enhanced_status(code, text)
    permanent = code >= 500
    _, subject, detail = status.split(".")
    bc: BounceClass
    if _REPUTATION_RE.search(text) or (status in ("5.7.0", "4.7.0") and "reputation" in text.lower()):
        bc = "reputation"
    elif subject == "7" or status in ("5.5.4",) or _POLICY_RE.search(text):
        bc = "policy"
    elif permanent and (subject == "1" or status in ("5.2.1", "5.4.4", "5.4.1") or _HARD_RE.search(text)):
        bc = "hard"
    elif subject == "2" and detail == "2":
        bc = "soft"  # mailbox full
    else:
        bc = "hard" if permanent else "soft"
    return Classification(bc, status, permanent)


@dataclass(frozen=True)
class RecipientFailure:
    rcpt: str
    status: str
    diagnostic: str  # the remote reply, e.g. "550 5.1.1 user unknown"
    remote_mta: str | None = None
    action: Literal["failed", "delayed"] = "failed"


def _header_block(original: bytes, limit: int = 64 * 1024) -> bytes:
    end = original.find(b"\r\n\r\n")
    if end < 0:
        end = original.find(b"\n\n")
    block = original if end < 0 else original[: end + 2]
    return block[:limit]


def build_dsn(
    *,
    reporting_mta: str,
    original_envelope_id: str,
    mail_from: str,
    arrival: float,
    failures: list[RecipientFailure],
    original: bytes,
    postmaster: str,
    now: float | None = None,
) -> bytes:
    """An RFC 3464 multipart/report DSN for ``failures``, addressed to the envelope sender."""
    now = time.time() if now is None else now
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    failed = any(f.action == "failed" for f in failures)
    subject = "Undelivered Mail Returned to Sender" if failed else "Delayed Mail (still being retried)"
    head = [
        f"From: Mail Delivery System <{postmaster}>",
        f"To: <{mail_from}>",
        f"Subject: {subject}",
        f"Date: {formatdate(now, usegmt=True)}",
        f"Message-ID: {make_msgid(domain=reporting_mta)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    human = [
        f"This is the mail system at host {reporting_mta}.",
        "",
        "Your message could not be delivered to one or more recipients." if failed
        else "Delivery of your message is delayed; the mail system will keep trying.",
        "",
        *(f"<{f.rcpt}>: {f.diagnostic}" for f in failures),
    ]
    status = [
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Original-Envelope-Id: {original_envelope_id}",
        f"Arrival-Date: {formatdate(arrival, usegmt=True)}",
    ]
    for f in failures:
        status += [
            "",
            f"Final-Recipient: rfc822; {f.rcpt}",
            f"Action: {f.action}",
            f"Status: {f.status}",
        ]
        if f.remote_mta:
            status.append(f"Remote-MTA: dns; {f.remote_mta}")
        status += [
            f"Diagnostic-Code: smtp; {_one_line(f.diagnostic)}",
            f"Last-Attempt-Date: {formatdate(now, usegmt=True)}",
        ]
    parts = [
        "\r\n".join(head),
        "",
        "This is a MIME-encapsulated delivery status notification.",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Description: Notification",
        "",
        "\r\n".join(human),
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        "\r\n".join(status),
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "Content-Description: Undelivered message headers",
        "",
    ]
    text = "\r\n".join(parts).encode("ascii", "replace") + b"\r\n"
    headers = _header_block(original).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return text + headers + f"\r\n--{boundary}--\r\n".encode()


def _one_line(text: str) -> str:
    return " ".join(text.split()).encode("ascii", "replace").decode()
