"""Templates: sandboxed, strict, bounded; the pure pre-flight check the controller calls."""

from __future__ import annotations

import pytest

from smtpinfra_campaign.templates import CampaignTemplates, TemplateProblem, validate_templates

from .helpers import spec

ROW = {"email": "a@example.test", "first_name": "Ann", "code": "<42>"}


def test_renders_subject_text_and_html_with_html_escaping():
    t = CampaignTemplates("Hi {{ first_name }}", "Code {{ code }}", "<b>{{ code }}</b>")
    r = t.render(ROW)
    assert r.subject == "Hi Ann"
    assert r.text == "Code <42>"
    assert r.html == "<b>&lt;42&gt;</b>"
    assert t.subject_variables == {"first_name"}


def test_validate_templates_accepts_a_good_campaign():
    assert validate_templates(spec(), [ROW]) is None


@pytest.mark.parametrize(("changes", "expected"), [
    ({"subject": "Hi {{ first_name"}, "spec.subject line 1"),
    ({"templates": {"text": "{% for x in %}"}}, "spec.templates.text"),
    ({"templates": {"html": "{{ nickname }}"}}, "'nickname' is undefined"),
    ({"templates": {"text": "{{ first_name.upper() }}"}}, "spec.templates.text"),
    ({"templates": {"text": "{{ first_name.__class__.__mro__ }}"}}, "spec.templates.text"),
    ({"templates": {"text": "{% include '/etc/passwd' %}"}}, "spec.templates.text"),
    ({"templates": {"text": "{{ 'x' * 2000000 }}"}}, "exceeds"),
    ({"templates": {"text": "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}"}}, "exceeds"),
])
def test_validate_templates_names_the_problem(changes, expected):
    problem = validate_templates(spec(**changes), [ROW])
    assert problem is not None
    assert expected in problem, problem


def test_undefined_variable_names_the_recipient():
    problem = validate_templates(spec(), [ROW, {"email": "b@example.test", "first_name": "Bob"}])
    assert problem is not None
    assert "recipient 2 (b@example.test)" in problem
    assert "'code' is undefined" in problem


def test_a_variable_cannot_break_the_subject_header():
    t = CampaignTemplates("Hi {{ first_name }}", "x", None)
    with pytest.raises(TemplateProblem, match="single line"):
        t.render({"first_name": "Ann\r\nBcc: victim@example.net"})


def test_filters_work_without_attribute_access():
    t = CampaignTemplates("{{ first_name | default('you') | upper }}", "{{ n | int + 1 }}", None)
    r = t.render({"n": "41"})
    assert (r.subject, r.text) == ("YOU", "42")
