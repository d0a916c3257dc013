"""Parsing of inbound reports on port 25: DSNs (RFC 3464) and ARF complaints (RFC 5965). Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Literal


@dataclass
class Report:
    kind: Literal["bounce", "complaint", "other"]
    recipients: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)


def _status_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    return []


def parse_report(content: bytes) -> Report:
    """Recognise a DSN or an ARF report and pull out the affected recipients."""
    msg = message_from_bytes(content)
    if msg.get_content_type() != "multipart/report":
        return Report("other")
    param = msg.get_param("report-type")
    report_type = param.lower() if isinstance(param, str) else ""
    parts = [p for p in msg.walk() if isinstance(p, Message)]
    if report_type == "feedback-report" or any(p.get_content_type() == "message/feedback-report" for p in parts):
        rcpts = []
        for p in parts:
            if p.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
                inner = p.get_payload()
                if isinstance(inner, list) and inner and isinstance(inner[0], Message) and inner[0]["To"]:
                    rcpts.append(str(inner[0]["To"]))
        return Report("complaint", rcpts)
    rep = Report("bounce")
    for p in parts:
        if p.get_content_type() == "message/delivery-status":
            for block in _status_blocks(p):
                fr = block.get("Final-Recipient")
                if fr:
                    rep.recipients.append(str(fr).split(";", 1)[-1].strip())
                    rep.statuses.append(str(block.get("Status", "")).strip())
    return rep
