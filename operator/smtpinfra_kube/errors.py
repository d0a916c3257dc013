"""The errors of the Kubernetes client.

`ApiException` has the shape of the `kubernetes` client's exception of that name (`status`,
`reason`, `body`, `headers`), so `except ApiException as error: if error.status == 404` reads the
same; it is our own class, so neither the operator nor the campaign sender needs that package
(~20 MB of models in every process that imports it, Kopf included).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["ApiError", "ApiException", "KindNotFound", "Paused"]


class ApiException(Exception):
    """An API request that did not succeed: HTTP `status` (0 when it was never sent), `reason`, `body`."""

    def __init__(self, status: int = 0, reason: str = "", body: str | None = None) -> None:
        super().__init__(f"({status}) {reason}")
        self.status = status
        self.reason = reason
        self.body = body
        self.headers: dict[str, str] | None = None


class ApiError(ApiException):
    """An API request answered with a status outside 2xx (or refused before it was sent)."""

    status: int
    reason: str
    body: str | None

    def __init__(self, status: int, reason: str, body: str | bytes | None = None) -> None:
        super().__init__(status=status, reason=reason)
        self.body = body.decode(errors="replace") if isinstance(body, bytes) else body
        self.headers = None

    @property
    def message(self) -> str:
        """The API server's `Status.message` when the body is one, else the reason."""
        try:
            parsed: Any = json.loads(self.body or "")
        except ValueError:
            return self.reason
        return str(parsed.get("message") or self.reason) if isinstance(parsed, dict) else self.reason


class Paused(ApiError):
    """A write refused before it was sent: the client's write guard said no (another replica is active)."""

    def __init__(self, method: str, path: str) -> None:
        super().__init__(status=0, reason=f"{method} {path} not sent: this replica is paused (peering)")


class KindNotFound(LookupError):
    """The API server does not serve this kind (its CRD is not installed)."""
