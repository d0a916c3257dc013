"""`KubeApi`: what the operator needs of a Kubernetes client, as a Protocol.

The operator's controllers are typed against it, so they take any object with these methods: a
`Client` in production, a fake in a unit test. `tests/kube_client/test_api_protocol.py` has mypy check that
`Client` satisfies it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .informer import Informer, Listener
from .rest import WriteGuard

__all__ = ["KubeApi"]


class KubeApi(Protocol):
    """The operator's view of the API server: REST calls, caches, server-side apply."""

    def identify(self, identity: str, may_write: WriteGuard | None = None) -> None: ...

    def request(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None, body: Any = None,
                content_type: str = "application/json", accept: str = "application/json") -> Any: ...

    async def get(self, api_version: str, kind: str, name: str,
                  namespace: str | None = None) -> dict[str, Any] | None: ...

    async def list_objects(self, api_version: str, kind: str, namespace: str | None = None,
                           label_selector: str | None = None) -> list[dict[str, Any]]: ...

    async def list_cached(self, api_version: str, kind: str, namespace: str | None = None,
                          label_selector: str | None = None, fresh: bool = False) -> list[dict[str, Any]]: ...

    def informer(self, api_version: str, kind: str, label_selector: str | None = None) -> Informer: ...

    def watch_cached(self, api_version: str, kind: str, listener: Listener,
                     label_selector: str | None = None) -> None: ...

    def watch_metadata(self, api_version: str, kind: str, listener: Listener) -> None: ...

    async def find_cached(self, api_version: str, kind: str, name: str, namespace: str | None = None,
                          label_selector: str | None = None) -> dict[str, Any] | None: ...

    async def get_cached(self, api_version: str, kind: str, name: str, namespace: str | None = None, *,
                         generation: int | None = None,
                         labels: dict[str, str] | None = None) -> dict[str, Any] | None: ...

    async def get_known(self, api_version: str, kind: str, name: str,
                        namespace: str | None = None) -> dict[str, Any] | None: ...

    def remember(self, obj: dict[str, Any]) -> None: ...

    def track_applied(self, label_selector: str,
                      on_changed: Callable[[dict[str, Any]], None] | None = None) -> None: ...

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]: ...

    async def create_if_absent(self, obj: dict[str, Any]) -> tuple[bool, dict[str, Any]]: ...

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None: ...

    async def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool: ...

    async def kind_exists(self, api_version: str, kind: str) -> bool: ...
