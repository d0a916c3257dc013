"""What the pod runner catches of its API calls (made with `smtpinfra_kube.Client`)."""

from __future__ import annotations

import httpx

from smtpinfra_kube import ApiError

KUBE_ERRORS: tuple[type[Exception], ...] = (ApiError, httpx.HTTPError, OSError)
"""An error answer, or no answer (connection refused or cut, timeout): a request to retry later."""
