"""The client the operator and the pod runner share: REST calls plus watch-backed caches.

Reads that every reconcile repeats come from informers (`list_cached`, `find_cached`,
`get_cached`, `get_known`); our own writes go through to them (`remember`); children nobody
changed since our last apply of the same content are not applied again (`track_applied`).
All of that state belongs to one `Client` object, so two clients (two tests, two replicas in one
process) share nothing.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

import httpx

from .config import KubeConfig
from .discovery import ABSENT_KIND_SECONDS
from .errors import ApiError, ApiException
from .informer import WATCH_SECONDS, Informer, Listener, RestListWatch
from .objects import Obj, cached, identity, known, metadata, selects, version_number
from .rest import CONNECTIONS, FIELD_MANAGER, USER_AGENT, RestClient, WriteGuard

__all__ = ["GENERATION_KINDS", "KNOWN_CACHE_KINDS", "SYNC_WAIT_SECONDS", "TRACKED_KINDS", "Client"]

InformerKey = tuple[str, str, str | None, str | None, bool]
"""(apiVersion, kind, namespace, label selector, metadata only)."""

KNOWN_CACHE_KINDS = frozenset({("v1", "Secret"), ("v1", "Service")})
"""Kinds `get_known` serves: read by every server reconcile (TLS and DKIM Secrets, the Services' addresses)."""
TRACKED_KINDS = frozenset({("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "Service"), ("apps/v1", "StatefulSet"),
                           ("policy/v1", "PodDisruptionBudget")})
GENERATION_KINDS = frozenset({("apps/v1", "StatefulSet"), ("policy/v1", "PodDisruptionBudget")})
"""Kinds whose controllers write their status often: a changed `generation` (spec), not resourceVersion, is an edit."""
SYNC_WAIT_SECONDS = 30.0
"""How long a cached read waits for its informer's first list before asking the API instead."""
SYNC_POLL_SECONDS = 0.02


def _version(api_version: str, kind: str, meta: dict[str, Any]) -> str:
    if (api_version, kind) in GENERATION_KINDS:
        return f"g{meta.get('generation')}"
    return f"r{meta.get('resourceVersion')}"


def _digest(obj: Obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Client(RestClient):
    """A Kubernetes client with the operator's caches; see `smtpinfra_kube.api.KubeApi` for the surface.

    `start_informers=False` creates informers without their threads (unit tests step them).
    """

    def __init__(self, config: KubeConfig | None = None, *,
                 transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
                 async_transport: httpx.AsyncBaseTransport | None = None, user_agent: str = USER_AGENT,
                 identity: str | None = None, may_write: WriteGuard | None = None,
                 connections: int = CONNECTIONS, field_manager: str = FIELD_MANAGER,
                 known_kinds: dict[tuple[str, str], tuple[str, bool]] | None = None,
                 absent_kind_seconds: float = ABSENT_KIND_SECONDS, start_informers: bool = True) -> None:
        super().__init__(config, transport=transport, async_transport=async_transport, user_agent=user_agent,
                         identity=identity, may_write=may_write, connections=connections,
                         field_manager=field_manager, known_kinds=known_kinds,
                         absent_kind_seconds=absent_kind_seconds)
        self._start_informers = start_informers
        self._informers: dict[InformerKey, Informer] = {}
        self._informers_lock = threading.Lock()
        self._known: dict[tuple[str, str, str, str], tuple[str, Obj]] = {}
        """(apiVersion, kind, namespace, name) → (resourceVersion, the object at it) as last read or written."""
        self._tracked_selector: str | None = None
        self._on_changed: Callable[[dict[str, Any]], None] | None = None
        self._last_applied: dict[tuple[str, str, str, str], tuple[str, str, dict[str, Any]]] = {}
        """(apiVersion, kind, namespace, name) → (digest of what we applied, the version it made, its metadata)."""

    # -- informers

    def shared_informer(self, key: tuple[str, str, str | None, str | None], metadata_only: bool = False) -> Informer:
        """The informer of (apiVersion, kind, namespace, label selector), in full or metadata only; one per key."""
        api_version, kind, namespace, selector = key
        with self._informers_lock:
            found = self._informers.get((*key, metadata_only))
            if found is None:
                source = RestListWatch(self._watch_http, functools.partial(self.path, api_version, kind, namespace),
                                       label_selector=selector, metadata_only=metadata_only, headers=self.headers)
                name = f"{kind}{'-meta' if metadata_only else ''}{f'-{selector}' if selector else ''}"
                found = Informer(source, name=name,
                                 keep=metadata if metadata_only else cached, typed=(api_version, kind),
                                 start=self._start_informers)
                self._informers[(*key, metadata_only)] = found
            return found

    def collection(self, path: str, *, name: str, label_selector: str | None = None,
                   listener: Listener | None = None, start: bool = False,
                   watch_seconds: int = WATCH_SECONDS) -> Informer:
        """A new informer of a REST collection path that keeps objects whole (the pod runner's pods,
        ConfigMaps and Secrets); not shared, not fed by `remember`."""
        source = RestListWatch(self._watch_http, path, label_selector=label_selector, headers=self.headers,
                               watch_seconds=watch_seconds)
        found = Informer(source, name=name, keep=identity, start=False)
        if listener is not None:
            found.listen(listener)
        if start:
            found.start()
        return found

    async def _synced(self, informer: Informer) -> bool:
        """Whether the informer has its first list, waiting up to SYNC_WAIT_SECONDS on the event loop.

        Polled, not waited for in a thread: a wait held one of the threads status writes and Events
        run in for as long as the list took, and a few slow lists at start-up held them all.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SYNC_WAIT_SECONDS
        while not informer.synced.is_set():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(SYNC_POLL_SECONDS)
        return True

    async def list_cached(self, api_version: str, kind: str, namespace: str | None = None,
                          label_selector: str | None = None, fresh: bool = False) -> list[dict[str, Any]]:
        """Every object of a kind as a watch-backed informer sees it; `fresh` lists from the API instead.

        The first call for a kind starts its informer and waits for the initial list; later calls
        read memory. A read can trail our own write by one watch event (`remember` narrows that).
        """
        if fresh:
            return await self.list_objects(api_version, kind, namespace, label_selector)
        informer = self.shared_informer((api_version, kind, namespace, label_selector))
        if not await self._synced(informer):
            return await self.list_objects(api_version, kind, namespace, label_selector)
        return informer.items()

    def informer(self, api_version: str, kind: str, label_selector: str | None = None) -> Informer:
        """The kind's cluster-wide informer (started on first use); `synced` tells when it has listed."""
        return self.shared_informer((api_version, kind, None, label_selector))

    def watch_cached(self, api_version: str, kind: str, listener: Listener, label_selector: str | None = None) -> None:
        """Start (or join) the kind's cluster-wide informer and call `listener` on each change it sees."""
        self.shared_informer((api_version, kind, None, label_selector)).listen(listener)

    def watch_metadata(self, api_version: str, kind: str, listener: Listener) -> None:
        """Call `listener` on each change of the kind's cluster-wide metadata-only informer (the one
        `get_known` reads): names and versions only, so watching every Secret holds no Secret data."""
        self.shared_informer((api_version, kind, None, None), metadata_only=True).listen(listener)

    async def find_cached(self, api_version: str, kind: str, name: str, namespace: str | None = None,
                          label_selector: str | None = None) -> dict[str, Any] | None:
        """One object of a `list_cached` list by name, without a request (None: not in the informer)."""
        informer = self.shared_informer((api_version, kind, None, label_selector))
        if not await self._synced(informer):
            return None
        return informer.get(namespace or "", name)

    async def get_cached(self, api_version: str, kind: str, name: str, namespace: str | None = None, *,
                         generation: int | None = None, labels: dict[str, str] | None = None) -> dict[str, Any] | None:
        """The object as the kind's informer holds it, else from the API (None: absent).

        A caller that knows the object's `generation` (and labels) from its own event passes
        them; a cached copy that is older is then read from the API instead.
        """
        informer = self.shared_informer((api_version, kind, None, None))
        if informer.synced.is_set():
            found = informer.get(namespace or "", name)
            if found is not None and (generation is None or (found["metadata"].get("generation") or 0) >= generation) \
                    and (labels is None or (found["metadata"].get("labels") or {}) == labels):
                return found
        return await self.get(api_version, kind, name, namespace)

    async def get_known(self, api_version: str, kind: str, name: str,
                        namespace: str | None = None) -> dict[str, Any] | None:
        """The object, without a request when its answer is already known (None: absent).

        A metadata-only informer of the kind says whether it exists and at which version; the
        object is fetched only when this client has not read or written that version yet.
        """
        if (api_version, kind) not in KNOWN_CACHE_KINDS:
            return await self.get(api_version, kind, name, namespace)
        informer = self.shared_informer((api_version, kind, None, None), metadata_only=True)
        if not await self._synced(informer):
            return await self.get(api_version, kind, name, namespace)
        meta = informer.get(namespace or "", name)
        if meta is None:
            return None
        key = (api_version, kind, namespace or "", name)
        hit = self._known.get(key)
        if hit is not None and hit[0] == str(meta["metadata"].get("resourceVersion")):
            return hit[1]
        found = await self.get(api_version, kind, name, namespace)
        if found is not None:
            found = known(found)
            self._known[key] = (str(found["metadata"].get("resourceVersion")), found)
        else:
            self._known.pop(key, None)
        return found

    def remember(self, obj: dict[str, Any]) -> None:
        """Write-through: put an object we just wrote into the informers that list it (read-your-writes).

        `get_known` keeps its own copy only of what no full informer holds: readers of a listed
        kind (the tenants' credential Secrets) read the informer, so a second copy is only memory.
        """
        meta = obj.get("metadata") or {}
        with self._informers_lock:
            informers = list(self._informers.items())
        held = False
        for (api_version, kind, namespace, selector, metadata_only), informer in informers:
            if (api_version, kind) != (obj.get("apiVersion"), obj.get("kind")):
                continue
            if namespace is not None and namespace != meta.get("namespace"):
                continue
            if selects(selector, meta.get("labels") or {}):
                informer.put(obj)
                held = held or not metadata_only
        if (obj.get("apiVersion"), obj.get("kind")) in KNOWN_CACHE_KINDS and meta.get("resourceVersion"):
            key = (obj["apiVersion"], obj["kind"], meta.get("namespace") or "", meta["name"])
            if held:
                self._known.pop(key, None)
            else:
                self._known[key] = (str(meta["resourceVersion"]), known(obj))

    # -- skipping unchanged children

    def track_applied(self, label_selector: str, on_changed: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Watch our own objects (those `label_selector` selects): skip re-applying what nobody changed,
        and call `on_changed(metadata)` (in an informer thread) when somebody else changes or deletes one.

        A metadata-only informer per kind tells whether anyone touched an object since our last
        apply: its version is still the one our apply made.
        """
        self._tracked_selector, self._on_changed = label_selector, on_changed
        for api_version, kind in sorted(TRACKED_KINDS):
            informer = self.shared_informer((api_version, kind, None, label_selector), metadata_only=True)
            informer.listen(functools.partial(self._tracked_event, api_version, kind))

    def _tracked_event(self, api_version: str, kind: str, type_: str, obj: dict[str, Any]) -> None:
        """A deletion always counts; a change counts when it is newer than our last apply and not of its version.

        An event older than our last apply is of our own earlier write, reaching us late (the watch
        trails our requests under load): reporting it made a change by nobody look like one by
        somebody else, and an edit by hand right after it went unnoticed by a caller waiting for one.
        """
        meta = obj["metadata"]
        key = (api_version, kind, meta.get("namespace") or "", meta["name"])
        if type_ == "DELETED":
            self._last_applied.pop(key, None)
        else:
            last = self._last_applied.get(key)
            if last is None or _version(api_version, kind, meta) == last[1]:
                return
            seen, written = version_number(obj), version_number({"metadata": last[2]})
            if seen is not None and written is not None and seen < written:
                return
        if self._on_changed is not None:
            self._on_changed(meta)

    def _tracker(self, obj: dict[str, Any]) -> Informer | None:
        if self._tracked_selector is None or (obj["apiVersion"], obj["kind"]) not in TRACKED_KINDS:
            return None
        if not selects(self._tracked_selector, obj["metadata"].get("labels") or {}):
            return None
        return self.shared_informer((obj["apiVersion"], obj["kind"], None, self._tracked_selector), metadata_only=True)

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply `obj` as the field manager (forcing our own fields back).

        The object as the server returned it; for a tracked object (`track_applied`) that nobody
        changed since our last apply of the same content, no request is made and only its
        metadata as that apply left it is returned.
        """
        meta = obj["metadata"]
        key = (obj["apiVersion"], obj["kind"], meta.get("namespace") or "", meta["name"])
        tracker = self._tracker(obj)
        digest = _digest(obj) if tracker is not None else ""
        if tracker is not None and tracker.synced.is_set():
            last = self._last_applied.get(key)
            live = tracker.get(key[2], key[3])
            if last is not None and live is not None and last[0] == digest \
                    and _version(key[0], key[1], live["metadata"]) == last[1]:
                return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": dict(last[2])}
        result: dict[str, Any] = await self.arequest(
            "PATCH", await self.apath(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]),
            query=[("fieldManager", self.field_manager), ("force", "true")], body=obj,
            content_type="application/apply-patch+yaml")
        self.remember(result)
        if tracker is not None:
            written = result.get("metadata") or {}
            self._last_applied[key] = (digest, _version(key[0], key[1], written), metadata(result)["metadata"])
        return result

    # -- creating

    async def create_if_absent(self, obj: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Create `obj` unless it exists; never modifies an existing one. Returns (created, object)."""
        meta = obj["metadata"]
        existing = await self.get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
        if existing is not None:
            return False, existing
        try:
            created = await self.post(obj)
        except ApiException as error:
            if error.status == 409:  # created concurrently: keep theirs
                found = await self.get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
                if found is None:
                    raise
                return False, found
            raise
        self.remember(created)
        return True, created

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create `obj`; None when created, else the object that already exists (never modified).

        The create-first twin of `create_if_absent`: one request when the object is new, two when
        it exists. For objects that are usually new and whose absence the caller already believes.
        """
        meta = obj["metadata"]
        try:
            self.remember(await self.post(obj))
            return None
        except ApiException as error:
            if error.status != 409:
                raise
        found = await self.get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
        if found is None:  # deleted again meanwhile: the next reconcile creates it
            raise ApiError(409, f"{obj['kind']} {meta['name']} exists and vanished")
        return found

    def close(self) -> None:
        """Stop every informer, then close the connections."""
        with self._informers_lock:
            informers = list(self._informers.values())
        for informer in informers:
            informer.stop()
        super().close()
