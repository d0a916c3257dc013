"""The Kubernetes client the controllers are given: a Protocol, and an adapter over `kube`.

Controllers never call `kube.xxx` module functions; the runtime hands each one an object with
these methods (constructor injection), so a controller's I/O is visible in its signature and a
different client (with its own transport) can be passed without touching the controllers. The
method names and signatures are those of `kube`'s public functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from . import kube
from .kube import ApiException, Informer, KindNotFound, Listener, Paused

__all__ = ["ApiException", "KindNotFound", "KubeApi", "ModuleKube", "Paused"]


class KubeApi(Protocol):
    """What the operator reads and writes through (see `kube` for each method's contract)."""

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


class ModuleKube:
    """`KubeApi` over the `kube` module's functions (one process-wide client and its informers)."""

    def request(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None, body: Any = None,
                content_type: str = "application/json", accept: str = "application/json") -> Any:
        return kube.request(method, path, query=query, body=body, content_type=content_type, accept=accept)

    async def get(self, api_version: str, kind: str, name: str,
                  namespace: str | None = None) -> dict[str, Any] | None:
        return await kube.get(api_version, kind, name, namespace)

    async def list_objects(self, api_version: str, kind: str, namespace: str | None = None,
                           label_selector: str | None = None) -> list[dict[str, Any]]:
        return await kube.list_objects(api_version, kind, namespace, label_selector)

    async def list_cached(self, api_version: str, kind: str, namespace: str | None = None,
                          label_selector: str | None = None, fresh: bool = False) -> list[dict[str, Any]]:
        return await kube.list_cached(api_version, kind, namespace, label_selector, fresh)

    def informer(self, api_version: str, kind: str, label_selector: str | None = None) -> Informer:
        return kube.informer(api_version, kind, label_selector)

    def watch_cached(self, api_version: str, kind: str, listener: Listener,
                     label_selector: str | None = None) -> None:
        kube.watch_cached(api_version, kind, listener, label_selector)

    def watch_metadata(self, api_version: str, kind: str, listener: Listener) -> None:
        kube.watch_metadata(api_version, kind, listener)

    async def find_cached(self, api_version: str, kind: str, name: str, namespace: str | None = None,
                          label_selector: str | None = None) -> dict[str, Any] | None:
        return await kube.find_cached(api_version, kind, name, namespace, label_selector)

    async def get_cached(self, api_version: str, kind: str, name: str, namespace: str | None = None, *,
                         generation: int | None = None,
                         labels: dict[str, str] | None = None) -> dict[str, Any] | None:
        return await kube.get_cached(api_version, kind, name, namespace, generation=generation, labels=labels)

    async def get_known(self, api_version: str, kind: str, name: str,
                        namespace: str | None = None) -> dict[str, Any] | None:
        return await kube.get_known(api_version, kind, name, namespace)

    def remember(self, obj: dict[str, Any]) -> None:
        kube.remember(obj)

    def track_applied(self, label_selector: str,
                      on_changed: Callable[[dict[str, Any]], None] | None = None) -> None:
        kube.track_applied(label_selector, on_changed)

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        return await kube.apply(obj)

    async def create_if_absent(self, obj: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        return await kube.create_if_absent(obj)

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        return await kube.create(obj)

    async def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        return await kube.delete(api_version, kind, name, namespace)

    async def kind_exists(self, api_version: str, kind: str) -> bool:
        return await kube.kind_exists(api_version, kind)
