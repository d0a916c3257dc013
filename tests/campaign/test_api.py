"""The Campaign API refuses what the sender cannot send compliantly, with a message naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.kube import apply

from .helpers import spec

pytestmark = pytest.mark.api

NAMESPACE = "campaign-api"


def _campaign(body: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Campaign",
            "metadata": {"name": "api-check", "namespace": NAMESPACE}, "spec": body}


def _without(path: str) -> dict[str, Any]:
    body = copy.deepcopy(spec())
    *parents, last = path.split(".")
    node = body
    for p in parents:
        node = node[p]
    del node[last]
    return body


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("no mailto", _without("unsubscribe.mailto"), "spec.unsubscribe.mailto is required"),
    ("unsubscribe disabled", spec(unsubscribe={"enabled": False, "mailto": "u@alpha.test"}),
     "unsubscribe must stay enabled"),
    ("no postal address", _without("postalAddress"), "spec.postalAddress: Required value"),
    ("no sender", _without("sender"), "spec.sender: Required value"),
    ("CR/LF in the subject", spec(subject="News\r\nBcc: victim@example.net"), "spec.subject must be a single line"),
    ("LF in the from name", spec(sender={"address": "news@alpha.test", "name": "A\nBcc: x@example.net"}),
     "spec.sender.name must be a single line"),
    ("two sources", spec(recipients={"inline": ["a@example.test"], "file": {"claimName": "lists", "path": "a.csv"}}),
     "set exactly one of inline, configMapRef, secretRef or file"),
    ("path escaping the volume", spec(recipients={"file": {"claimName": "lists", "path": "../etc/passwd"}}),
     "spec.recipients.file.path"),
    ("unknown format", spec(recipients={"file": {"claimName": "lists", "path": "a.csv"}, "format": "xml"}),
     "spec.recipients.format"),
]


@pytest.mark.parametrize(("body", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_campaign_is_refused_naming_the_field(crds, body, expected):
    crds.kubectl("create", "namespace", NAMESPACE, check=False)
    result = apply(crds, _campaign(body), "--dry-run=server", check=False)
    assert result.returncode != 0, "accepted"
    assert expected in result.stderr, result.stderr


def test_a_list_on_a_volume_in_jsonl_is_accepted(crds):
    crds.kubectl("create", "namespace", NAMESPACE, check=False)
    body = spec(recipients={"file": {"claimName": "lists", "path": "2026/november.jsonl"}, "format": "jsonl"})
    result = apply(crds, _campaign(body), "--dry-run=server", check=False)
    assert result.returncode == 0, result.stderr
