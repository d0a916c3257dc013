"""Parsing of inbound reports on port 25: DSNs (RFC 3464) and ARF complaints (RFC 5965). Pure.

Anyone can mail port 25, so the input is hostile: only the first ``max_bytes`` are parsed (the report
parts and the quoted headers come first), address values are bounded in length and comment nesting
before the email package sees them (its address parser recurses once per nested comment), and every
failure is a :class:`ReportError`. The email package's parsing can still be slow on crafted headers
(quadratic parameter parsing), so the MTA runs this in a worker process with a time limit
(``reportworker``), never on the delivery event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.parser import HeaderParser
from email.utils import parseaddr
from typing import Literal


@dataclass
class Report:
    kind: Literal["bounce", "complaint", "other"]
    recipients: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)  # per recipient, e.g. "5.1.1" (DSNs)
    actions: list[str] = field(default_factory=list)  # per recipient: failed, delayed, delivered... (DSNs)
    diagnostics: list[str] = field(default_factory=list)  # per recipient: Diagnostic-Code text (DSNs)
    return_paths: list[str] = field(default_factory=list)  # the original's envelope sender, where quoted
    feedback_type: str = ""  # ARF: abuse, fraud, not-spam...
    feedback_ids: list[str] = field(default_factory=list)  # Feedback-ID of the quoted original (campaign tag)
    subject: str = ""  # of a plain message ("other"): a mailto: unsubscribe carries its token there


def _status_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    if isinstance(payload, str):
        return [HeaderParser().parsestr(block) for block in payload.replace("\r\n", "\n").split("\n\n") if block]
    return []


def _embedded_headers(part: Message) -> Message | None:
    """The original message (or its headers) quoted in a report part."""
    inner = part.get_payload()
    if isinstance(inner, list) and inner and isinstance(inner[0], Message):
        return inner[0]
    if isinstance(inner, str):
        return HeaderParser().parsestr(inner.replace("\r\n", "\n"), headersonly=True)
    return None


MAX_ADDRESS_FIELD = 998  # RFC 5322 line length: no real Return-Path / Original-Mail-From is longer
MAX_COMMENT_DEPTH = 8  # nesting of (comments) in one address field
DEFAULT_MAX_BYTES = 128 * 1024
MAX_SUBJECT = 4096  # longer than an unsubscribe token (2048) with a prefix


class ReportError(Exception):
    """The content could not be parsed as a report (too deeply nested, or the parser failed)."""


def _comment_depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth = max(0, depth - 1)
    return deepest


def _addr(value: object) -> str:
    """The address in a header value; '' for values no real report carries (too long, nested comments)."""
    text = str(value)
    if len(text) > MAX_ADDRESS_FIELD or _comment_depth(text) > MAX_COMMENT_DEPTH:
        return ""
    return parseaddr(text)[1]


def parse_report(content: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Report:
    """Recognise a DSN or an ARF report and pull out the affected recipients and the original return path.

    Raises :class:`ReportError` when the content cannot be parsed; never anything else.
    """
    try:
        return _parse(content[:max_bytes])
    except RecursionError as exc:
        raise ReportError("report nested too deeply") from exc
    except Exception as exc:
        raise ReportError(f"report unparseable: {type(exc).__name__}: {str(exc)[:200]}") from exc


def _parse(content: bytes) -> Report:
    msg = message_from_bytes(content)
    if msg.get_content_type() != "multipart/report":
        return Report("other", subject=" ".join(str(msg.get("Subject", ""))[:MAX_SUBJECT].split()))
    param = msg.get_param("report-type")
    report_type = param.lower() if isinstance(param, str) else ""
    parts = [p for p in msg.walk() if isinstance(p, Message)]
    originals = [h for p in parts if p.get_content_type() in ("message/rfc822", "text/rfc822-headers")
                 if (h := _embedded_headers(p)) is not None]
    return_paths = [a for h in originals for v in h.get_all("Return-Path", []) if (a := _addr(v))]
    feedback_ids = [" ".join(str(v).split())[:MAX_ADDRESS_FIELD] for h in originals
                    for v in h.get_all("Feedback-ID", [])]
    if report_type == "feedback-report" or any(p.get_content_type() == "message/feedback-report" for p in parts):
        rep = Report("complaint", return_paths=return_paths, feedback_ids=feedback_ids)
        for p in parts:
            if p.get_content_type() == "message/feedback-report":
                for block in _status_blocks(p):
                    rep.feedback_type = rep.feedback_type or str(block.get("Feedback-Type", "")).strip().lower()
                    if block.get("Original-Mail-From"):
                        rep.return_paths.insert(0, _addr(block["Original-Mail-From"]))
                    if block.get("Original-Rcpt-To"):
                        rep.recipients.append(_addr(block["Original-Rcpt-To"]))
        if not rep.recipients:
            rep.recipients = [a for h in originals if h["To"] and (a := _addr(h["To"]))]
        return rep
    rep = Report("bounce", return_paths=return_paths, feedback_ids=feedback_ids)
    for p in parts:
        if p.get_content_type() == "message/delivery-status":
            for block in _status_blocks(p):
                fr = block.get("Final-Recipient")
                if fr:
                    rep.recipients.append(str(fr).split(";", 1)[-1].strip().strip("<>")[:MAX_ADDRESS_FIELD])
                    rep.statuses.append(str(block.get("Status", "")).strip())
                    rep.actions.append(str(block.get("Action", "")).strip().lower())
                    rep.diagnostics.append(" ".join(str(block.get("Diagnostic-Code", "")).split(";", 1)[-1].split()))
    return rep
