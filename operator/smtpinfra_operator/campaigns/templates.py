"""Render a campaign's subject and bodies against sample rows before anything is sent (pure).

The same rules the sender renders with: Jinja2's sandbox (no attribute or file access beyond what
the sandbox allows), ``StrictUndefined`` (an undefined variable is an error, never an empty
string), HTML autoescaped. Used until the sender package's own check is available here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from smtpinfra_api.v1alpha1 import CampaignSpec

PROVIDED = ("unsubscribe_url", "postal_address")
"""Variables the sender provides besides the row's own fields."""


def _environment(html: bool) -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=html)


def _context(spec: CampaignSpec, row: Mapping[str, Any]) -> dict[str, Any]:
    provided = {"unsubscribe_url": f"{spec.unsubscribe.url or 'https://unsubscribe.invalid'}/unsubscribe/sample",
                "postal_address": spec.postal_address}
    return {**provided, **row}


def template_error(spec: CampaignSpec, rows: Sequence[Mapping[str, Any]]) -> str | None:
    """None when subject, text and HTML render for every row; else the first error, naming the part and row."""
    parts = [("subject", spec.subject, False), ("text", spec.templates.text, False),
             ("html", spec.templates.html, True)]
    compiled = []
    for part, source, html in parts:
        if source is None:
            continue
        try:
            compiled.append((part, _environment(html).from_string(source)))
        except jinja2.TemplateSyntaxError as error:
            return f"{part} template, line {error.lineno}: {error.message}"
    for number, row in enumerate(rows, start=1):
        for part, template in compiled:
            try:
                rendered = template.render(_context(spec, row))
            except jinja2.UndefinedError as error:
                return f"{part} template, sample row {number}: {error.message}"
            except jinja2.exceptions.SecurityError as error:
                return f"{part} template, sample row {number}: not allowed: {error}"
            except Exception as error:  # any failure of a user's template is a template error
                return f"{part} template, sample row {number}: {type(error).__name__}: {error}"
            if part == "subject" and ("\r" in rendered or "\n" in rendered):
                return f"subject template, sample row {number}: renders a line break (CR/LF) into the header"
    return None
