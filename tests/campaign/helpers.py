"""Campaign documents for the sender's tests."""

from __future__ import annotations

import copy
from typing import Any

CAMPAIGN_SPEC: dict[str, Any] = {
    "tenant": "alpha",
    "serverRef": {"name": "outbound", "namespace": "default"},
    "sender": {"address": "news@alpha.test", "name": "Alpha News"},
    "replyTo": "support@alpha.test",
    "subject": "News for {{ first_name }}",
    "templates": {
        "text": "Hello {{ first_name }},\nyour code is {{ code }}.\n",
        "html": "<p>Hello {{ first_name }}, your code is <b>{{ code }}</b>.</p>",
    },
    "recipients": {"inline": ["a@example.test"]},
    "rate": {"messagesPerMinute": 1_000_000},
    "unsubscribe": {"url": "https://u.alpha.test/unsubscribe", "mailto": "unsubscribe@alpha.test"},
    "postalAddress": "Alpha Ltd, 1 Test Street, Testville",
}


def spec(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(CAMPAIGN_SPEC)
    out.update(changes)
    return out
