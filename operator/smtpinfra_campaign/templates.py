"""Campaign templates: Jinja2 in a sandbox, strict about undefined variables, bounded in output.

The templates are written by tenants, so they run in `SandboxedEnvironment` with every attribute
refused (variables are plain values; filters such as `default` or `upper` cover formatting), no
loader (no `include`/`import` of files) and a cap on the rendered size. `validate_templates` is
pure: the Campaign controller calls it on the first rows before a sender is started, and the
sender calls it again before its first message.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment

from smtpinfra_api.meta import refuse_header_breaking
from smtpinfra_api.v1alpha1.campaign import CampaignSpec

MAX_BODY_BYTES = 1_000_000
"""Largest rendered text or HTML body (characters); the MTA's message size limit is the real bound."""
MAX_SUBJECT_CHARS = 998
"""RFC 5322 line length: the subject must fit in one header line before folding."""


class TemplateProblem(ValueError):
    """A template that does not compile or does not render for a recipient; the message names the part."""


class _NoAttributes(SandboxedEnvironment):
    """A sandbox that refuses every attribute and method: `{{ name.upper() }}` or `{{ x.__class__ }}`."""

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return False


def _environment(autoescape: bool) -> SandboxedEnvironment:
    return _NoAttributes(undefined=StrictUndefined, autoescape=autoescape, loader=None,
                         keep_trailing_newline=True)


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str | None
    html: str | None


def _bounded(parts: Iterator[str], limit: int, what: str) -> str:
    out: list[str] = []
    size = 0
    for part in parts:
        size += len(part)
        if size > limit:
            raise TemplateProblem(f"{what}: rendered output exceeds {limit} characters")
        out.append(part)
    return "".join(out)


class CampaignTemplates:
    """The compiled subject, text and HTML templates of one campaign."""

    def __init__(self, subject: str, text: str | None, html: str | None) -> None:
        plain, markup = _environment(False), _environment(True)
        self.subject = self._compile(plain, subject, "spec.subject")
        self.text = self._compile(plain, text, "spec.templates.text") if text is not None else None
        self.html = self._compile(markup, html, "spec.templates.html") if html is not None else None
        self.subject_variables = frozenset(meta.find_undeclared_variables(plain.parse(subject)))
        """Variables that end up in the Subject header: their values must be single lines."""

    @classmethod
    def from_spec(cls, spec: CampaignSpec) -> CampaignTemplates:
        return cls(spec.subject, spec.templates.text, spec.templates.html)

    @staticmethod
    def _compile(env: SandboxedEnvironment, source: str, where: str) -> Template:
        try:
            return env.from_string(source)
        except TemplateError as exc:
            line = getattr(exc, "lineno", None)
            raise TemplateProblem(f"{where}{f' line {line}' if line else ''}: {exc}") from None

    def render(self, variables: Mapping[str, Any]) -> Rendered:
        """The three parts for one recipient; a TemplateProblem names the part and the cause."""
        subject = self._render(self.subject, variables, MAX_SUBJECT_CHARS, "spec.subject").strip()
        try:
            refuse_header_breaking(subject)
        except ValueError as exc:
            raise TemplateProblem(f"spec.subject: rendered subject is not a single line: {exc}") from None
        if not subject:
            raise TemplateProblem("spec.subject: rendered subject is empty")
        text = self._render(self.text, variables, MAX_BODY_BYTES, "spec.templates.text") if self.text else None
        html = self._render(self.html, variables, MAX_BODY_BYTES, "spec.templates.html") if self.html else None
        return Rendered(subject, text, html)

    @staticmethod
    def _render(template: Template, variables: Mapping[str, Any], limit: int, where: str) -> str:
        try:
            return _bounded(template.generate(dict(variables)), limit, where)
        except TemplateProblem:
            raise
        except (TemplateError, TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
            raise TemplateProblem(f"{where}: {type(exc).__name__}: {exc}") from None


def validate_templates(spec: CampaignSpec | Mapping[str, Any], first_rows: Iterable[Mapping[str, Any]]) -> str | None:
    """The error that stops the campaign before anything is sent, or None when the templates are usable.

    `spec` is the Campaign's spec (model or the camelCase dict from the API); `first_rows` the
    variables of the first recipients (each with its `email`). Compiles all three templates and
    renders them for every row given.
    """
    try:
        model = spec if isinstance(spec, CampaignSpec) else CampaignSpec.model_validate(spec)
        templates = CampaignTemplates.from_spec(model)
        for n, row in enumerate(first_rows, start=1):
            try:
                templates.render(row)
            except TemplateProblem as exc:
                return f"recipient {n} ({row.get('email', '?')}): {exc}"
    except TemplateProblem as exc:
        return str(exc)
    except ValueError as exc:  # pydantic's ValidationError
        return f"invalid campaign spec: {exc}"
    return None
