"""REST calls to the API server over httpx: one request, get, list, create, delete, discovery.

Sync callers (the CLI, informer threads, the pod runner) use an `httpx.Client`; the operator's
coroutines an `httpx.AsyncClient`, so a reconcile waiting for the API server holds no thread.
Both take an injectable transport (`httpx.MockTransport` in unit tests). Every request passes
`_guard`: with a write guard installed, a write it refuses raises `Paused` and is never sent.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Callable
from typing import Any

import httpx

from .config import KubeConfig
from .discovery import ABSENT_KIND_SECONDS, Discovery
from .errors import ApiError, ApiException, KindNotFound, Paused
from .objects import Obj, slim

__all__ = ["CONNECTIONS", "FIELD_MANAGER", "READ_METHODS", "USER_AGENT", "RestClient", "WriteGuard"]

FIELD_MANAGER = "smtp-infra-operator"
USER_AGENT = "smtp-infra-operator"
CONNECTIONS = 24
"""Requests go over HTTP/2 (one TLS connection, multiplexed; this bounds it should the server only
speak HTTP/1.1). With HTTP/1.1, httpcore looked at every pooled connection (a poll and a
getpeername each) twice per request: a sixth of the operator's CPU in the scale bench with 56
connections, a ninth with 24. Watches have their own connections."""
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WriteGuard = Callable[[str], bool]
"""Called with a write's path; True when the write may be sent."""
REQUEST_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def _encode(body: Any) -> bytes | None:
    if body is None:
        return None
    if isinstance(body, bytes):
        return body
    return (body if isinstance(body, str) else json.dumps(body)).encode()


def _decode(method: str, path: str, response: httpx.Response) -> Any:
    if not response.is_success:
        raise ApiError(response.status_code, response.reason_phrase or f"{method} {path}", response.content)
    return json.loads(response.content) if response.content else None


class RestClient:
    """The API server's REST interface, configured once: server, credentials, identity, write guard."""

    def __init__(self, config: KubeConfig | None = None, *,
                 transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
                 async_transport: httpx.AsyncBaseTransport | None = None, user_agent: str = USER_AGENT,
                 identity: str | None = None, may_write: WriteGuard | None = None,
                 connections: int = CONNECTIONS, field_manager: str = FIELD_MANAGER,
                 known_kinds: dict[tuple[str, str], tuple[str, bool]] | None = None,
                 absent_kind_seconds: float = ABSENT_KIND_SECONDS) -> None:
        self.config = config if config is not None else KubeConfig.load()
        self.server = self.config.server
        self.field_manager = field_manager
        self.base_user_agent = user_agent
        self.user_agent = f"{user_agent}/{identity}" if identity else user_agent
        self.may_write = may_write
        self._sync_transport = transport if isinstance(transport, httpx.BaseTransport) else None
        self._async_transport = async_transport or (
            transport if isinstance(transport, httpx.AsyncBaseTransport) else None)
        no_network = self._sync_transport is not None and self._async_transport is not None
        self._no_network = no_network
        self._connections = connections
        self._http = self._sync_client(httpx.Limits(max_connections=connections,
                                                    max_keepalive_connections=connections))
        self._watch_http = self._sync_client(httpx.Limits(max_connections=None, max_keepalive_connections=0))
        """Watches hold their connection for minutes: they must never wait for (or starve) requests."""
        self._async_lock = threading.Lock()
        self._async_client: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None
        self.discovery = Discovery(lambda path: self.request("GET", path), known=known_kinds,
                                   absent_ttl=absent_kind_seconds)

    def _sync_client(self, limits: httpx.Limits) -> httpx.Client:
        if self._sync_transport is not None:
            return httpx.Client(base_url=self.server, transport=self._sync_transport)
        return httpx.Client(base_url=self.server, verify=self._tls(), limits=limits, timeout=REQUEST_TIMEOUT)

    def _tls(self) -> ssl.SSLContext | bool:
        """A TLS context of its own for each client: httpx sets ALPN on the context it is given, so the
        HTTP/2 client's context shared with the watch client made every watch offer h2 and land on one
        multiplexed connection, where one thread's blocking read stalled the other informers' lists."""
        return True if self._no_network else self.config.ssl_context() or True

    def _async(self) -> httpx.AsyncClient:
        """The async client of the running event loop (a client's connections belong to one loop)."""
        loop = asyncio.get_running_loop()
        with self._async_lock:
            if self._async_client is None or self._async_client[0] is not loop:
                if self._async_transport is not None:
                    client = httpx.AsyncClient(base_url=self.server, transport=self._async_transport)
                else:
                    limits = httpx.Limits(max_connections=self._connections,
                                          max_keepalive_connections=self._connections)
                    client = httpx.AsyncClient(base_url=self.server, verify=self._tls(), limits=limits,
                                               timeout=REQUEST_TIMEOUT, http2=True)
                self._async_client = (loop, client)
            return self._async_client[1]

    def identify(self, identity: str, may_write: WriteGuard | None = None) -> None:
        """Name this replica in every request's User-Agent (audit logs tell replicas apart), and
        install the peering's write guard: a paused replica sends no write of any kind."""
        self.user_agent = f"{self.base_user_agent}/{identity}"
        self.may_write = may_write

    def headers(self, accept: str = "application/json") -> dict[str, str]:
        """What every request carries: identity, credentials (a rotated token is re-read), Accept."""
        headers = {"User-Agent": self.user_agent, "Accept": accept}
        token = self.config.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _guard(self, method: str, path: str) -> None:
        if method.upper() not in READ_METHODS and self.may_write is not None and not self.may_write(path):
            raise Paused(method, path)

    def _build(self, method: str, path: str, query: list[tuple[str, str]] | None, body: Any, content_type: str,
               accept: str) -> dict[str, Any]:
        self._guard(method, path)
        headers = self.headers(accept)
        content = _encode(body)
        if content is not None:
            headers["Content-Type"] = content_type
        return {"method": method, "url": path, "params": query or [], "content": content, "headers": headers}

    def request(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None, body: Any = None,
                content_type: str = "application/json", accept: str = "application/json",
                timeout: float | None = None) -> Any:
        """One REST call; the decoded JSON body, or ApiError (an ApiException) for any non-2xx status.

        A write the write guard refuses raises `Paused` without a request.
        """
        call = self._build(method, path, query, body, content_type, accept)
        response = self._http.request(**call, timeout=timeout if timeout is not None else REQUEST_TIMEOUT)
        return _decode(method, path, response)

    async def arequest(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
                       body: Any = None, content_type: str = "application/json",
                       accept: str = "application/json") -> Any:
        """`request` from a coroutine, over the async client."""
        call = self._build(method, path, query, body, content_type, accept)
        return _decode(method, path, await self._async().request(**call))

    # -- paths

    def path(self, api_version: str, kind: str, namespace: str | None = None, name: str | None = None) -> str:
        """The REST path of a kind's collection or object (KindNotFound when the kind is not served)."""
        return Discovery.path(api_version, self.discovery.lookup(api_version, kind), namespace, name)

    async def apath(self, api_version: str, kind: str, namespace: str | None = None,
                    name: str | None = None) -> str:
        """`path` from a coroutine: a discovery request, when one is needed, runs in a thread."""
        resource = self.discovery.cached(api_version, kind)
        if resource is None:
            resource = await asyncio.to_thread(self.discovery.lookup, api_version, kind)
        return Discovery.path(api_version, resource, namespace, name)

    # -- the operations

    async def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        """The object, or None when it does not exist."""
        try:
            found: Obj = await self.arequest("GET", await self.apath(api_version, kind, namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    async def list_objects(self, api_version: str, kind: str, namespace: str | None = None,
                           label_selector: str | None = None) -> list[Obj]:
        """Every object of a kind (in one namespace or cluster-wide), without managedFields."""
        query = [("labelSelector", label_selector)] if label_selector else []
        listing = await self.arequest("GET", await self.apath(api_version, kind, namespace), query=query)
        return [slim(item) for item in listing.get("items") or []]

    async def post(self, obj: Obj) -> Obj:
        """Create `obj` (ApiError 409 when it exists)."""
        meta = obj["metadata"]
        created: Obj = await self.arequest("POST", await self.apath(obj["apiVersion"], obj["kind"],
                                                                    meta.get("namespace")), body=obj)
        return created

    async def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete if present; returns whether something was deleted."""
        try:
            await self.arequest("DELETE", await self.apath(api_version, kind, namespace, name))
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    async def kind_exists(self, api_version: str, kind: str) -> bool:
        """Whether the API serves a kind (e.g. ServiceMonitor, Certificate are optional CRDs).

        A missing kind is looked up again at most every `absent_kind_seconds`, so installing the
        CRD later is noticed by the next resync, without a discovery round trip on every reconcile.
        """
        try:
            await self.apath(api_version, kind)
        except KindNotFound:
            return False
        return True

    def close(self) -> None:
        """Close the sync clients' connections (the async client closes with its event loop)."""
        self._http.close()
        self._watch_http.close()

