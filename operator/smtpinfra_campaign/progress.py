"""The progress the sender publishes on its Lease (annotation `smtpinfra.com/progress`).

The Campaign controller reads it; the format is fixed by the contract between the two.
"""

from __future__ import annotations

import json

from .ledger import State

MAX_INVALID_ROWS = 20


def progress_json(counts: dict[State, int], *, total: int, done: bool, error: str | None,
                  invalid_rows: list[tuple[int, str]]) -> str:
    return json.dumps({
        "total": total,
        "submitted": counts.get(State.SUBMITTED, 0),
        "invalid": counts.get(State.INVALID, 0),
        "suppressed": counts.get(State.SUPPRESSED, 0),
        "failed": counts.get(State.FAILED, 0),
        "done": done,
        "error": error,
        "invalidRows": [{"row": r, "reason": reason} for r, reason in invalid_rows[:MAX_INVALID_ROWS]],
    }, separators=(",", ":"), sort_keys=True)
