"""A Kubernetes client as an object: REST over httpx (injectable transport), discovery, informers,
watch-backed caches and server-side apply that skips unchanged children.

Shared by the operator, the campaign sender, the CLI and the local pod runner; it imports none of
them (nor the MTA), and holds no module-level mutable state: everything lives in a `Client` and
its `Informer`s.
"""

from __future__ import annotations

from .api import KubeApi
from .client import Client
from .config import ConfigError, KubeConfig
from .discovery import Discovery
from .errors import ApiError, ApiException, KindNotFound, Paused
from .informer import Backoff, Informer, Listener, ListWatch, RestListWatch
from .objects import Obj, Packed, object_key, thaw
from .rest import FIELD_MANAGER, USER_AGENT, WriteGuard

__all__ = [
    "FIELD_MANAGER", "USER_AGENT", "ApiError", "ApiException", "Backoff", "Client", "ConfigError", "Discovery",
    "Informer", "KindNotFound", "KubeApi", "KubeConfig", "ListWatch", "Listener", "Obj", "Packed", "Paused",
    "RestListWatch", "WriteGuard", "object_key", "thaw",
]
