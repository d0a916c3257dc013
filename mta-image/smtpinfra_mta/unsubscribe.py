"""One-click unsubscribe (RFC 8058) on the MTA pods' HTTP listener: ``/unsubscribe/<token>``.

A GET is a human who clicked the link in the body: it shows a confirmation page with a form and
changes nothing (mail scanners follow links too). A POST carrying ``List-Unsubscribe=One-Click``
(form-urlencoded or multipart, no cookies, no redirect) puts the address on the tenant's suppression
list before answering 200. Tokens are HMACs (``campaign_contract``) under the server's keys, the current
and previous ones; a bad token gets 404 without detail, so the endpoint tells a prober nothing.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from urllib.parse import parse_qs

from smtpinfra_mta.campaign_contract import UNSUBSCRIBE_PATH, Unsubscribe, verify_unsubscribe
from smtpinfra_mta.outcomes import OutcomeStore
from smtpinfra_mta.suppression import SuppressionStore

log = logging.getLogger(__name__)
ONE_CLICK = "One-Click"
REASON = "unsubscribe"

Response = tuple[str, str, bytes]
NOT_FOUND: Response = ("404 Not Found", "text/plain", b"not found\n")
BAD_REQUEST: Response = ("400 Bad Request", "text/plain", b"bad request\n")


def one_click(content_type: str, body: bytes) -> bool:
    """Whether a POST body says ``List-Unsubscribe=One-Click`` (RFC 8058 section 3.1), in either encoding."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(body.decode("ascii"), keep_blank_values=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            return False
        return form.get("List-Unsubscribe") == [ONE_CLICK]
    if ctype == "multipart/form-data":
        msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
                                                  + body)
        if not msg.is_multipart():
            return False
        for part in msg.iter_parts():
            if part.get_param("name", header="content-disposition") == "List-Unsubscribe":
                payload = part.get_payload(decode=True)
                return isinstance(payload, bytes) and payload.strip() == ONE_CLICK.encode()
    return False


def confirmation_page(token: str) -> bytes:
    """The page a GET shows: one button that POSTs the one-click form back to the same link."""
    action = html.escape(UNSUBSCRIBE_PATH + token, quote=True)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Unsubscribe</title></head><body>\n"
        "<h1>Unsubscribe</h1>\n<p>Stop receiving these emails?</p>\n"
        f"<form method=\"post\" action=\"{action}\">\n"
        "<input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\n"
        "<button type=\"submit\">Unsubscribe</button>\n</form>\n</body></html>\n"
    ).encode()


DONE_PAGE = (b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Unsubscribed</title></head><body>\n"
             b"<h1>Unsubscribed</h1>\n<p>You will not receive these emails any more.</p>\n</body></html>\n")


def load_keys(paths: list[Path]) -> list[bytes]:
    """The keys, current first; unreadable or empty files are skipped (logged), not fatal."""
    keys: list[bytes] = []
    for p in paths:
        try:
            key = p.read_bytes().strip()
        except OSError as exc:
            log.error("unsubscribe key unreadable", extra={"file": str(p), "error": str(exc)})
            continue
        if key:
            keys.append(key)
    return keys


@dataclass
class UnsubscribeService:
    """Serves the endpoint; ``keys`` is read per request so a rotated Secret applies at once."""

    keys: Callable[[], list[bytes]]
    suppression: SuppressionStore
    outcomes: OutcomeStore | None = None

    def verify(self, path: str) -> tuple[str, Unsubscribe | None]:
        token = path.removeprefix(UNSUBSCRIBE_PATH)
        keys = self.keys()
        return token, (verify_unsubscribe(keys, token) if keys and token else None)

    async def handle(self, method: str, path: str, content_type: str, body: bytes) -> Response:
        token, request = self.verify(path)
        if request is None:
            return NOT_FOUND
        if method in ("GET", "HEAD"):
            return "200 OK", "text/html; charset=utf-8", confirmation_page(token)
        if method != "POST":
            return "405 Method Not Allowed", "text/plain", b"method not allowed\n"
        if not one_click(content_type, body):
            return BAD_REQUEST
        await self._suppress(request)
        return "200 OK", "text/html; charset=utf-8", DONE_PAGE

    async def by_mail(self, subject: str) -> bool:
        """The ``mailto:`` form: a message whose subject carries a token; True when one was valid."""
        keys = self.keys()
        for word in subject.split()[:8] if keys else []:
            request = verify_unsubscribe(keys, word.strip("<>[]()\"'"))
            if request is not None:
                await self._suppress(request)
                return True
        return False

    async def _suppress(self, request: Unsubscribe) -> None:
        campaign = f"{request.namespace}/{request.campaign}"
        already = await self.suppression.is_suppressed(request.tenant, request.address)
        if not already:
            await self.suppression.add(request.tenant, request.address, REASON)
            if self.outcomes is not None:  # a repeated click is not another unsubscribe
                self.outcomes.unsubscribed(campaign, request.tenant)
        log.info("unsubscribed", extra={"tenant": request.tenant, "campaign": campaign, "repeated": already})
