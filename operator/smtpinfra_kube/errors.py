"""The errors of the Kubernetes client.

`ApiError` subclasses the `kubernetes` client's `ApiException` (status, reason, body), so code
written against that client (`except ApiException as error: if error.status == 404`) keeps
working unchanged when it is handed this client.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client.exceptions import ApiException

__all__ = ["ApiError", "ApiException", "KindNotFound", "Paused"]


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
