"""List + watch one collection into memory, in a thread: reads cost nothing, changes cost one event.

One implementation for the operator and the local pod runner (they had two, which restarted
differently). Its life, like client-go's reflector:

* list, store every item (through `keep`, which decides what of an object is held), tell the
  listeners, set `synced`;
* watch from the list's resourceVersion with bookmarks; each event patches the store and is
  passed to the listeners; a watch that simply ends (the server's timeout) resumes from the
  last version seen (a bookmark's too), without a list;
* 410 Gone (the version expired) lists again at once; any other error (API server restarting,
  connection refused, a broken stream) backs off exponentially, then lists again: what happened
  meanwhile is then known for sure, and the error cannot repeat on a version that is no longer
  valid;
* a re-list tells listeners what changed while nobody watched: ADDED for new objects, MODIFIED
  for objects at another version, DELETED for those gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

import httpx

from .errors import ApiError
from .objects import Obj, identity, object_key, resource_version, version_number

__all__ = ["WATCH_SECONDS", "Backoff", "Informer", "ListWatch", "Listener", "RestListWatch"]

log = logging.getLogger(__name__)

WATCH_SECONDS = 240
"""Server-side timeout of one watch request; the informer then watches again from its version."""

Listener = Callable[[str, Obj], None]
"""Called (in the informer's thread) with an event's type and the object as the informer keeps it."""


class ListWatch(Protocol):
    """How an informer lists and watches its collection: REST over httpx here, a script in tests."""

    def list(self) -> Obj:
        """The list response (items and metadata.resourceVersion)."""
        ...

    def watch(self, version: str) -> Iterator[Obj]:
        """Watch events from `version` on, until the watch ends."""
        ...

    def abort(self) -> None:
        """Make a running `watch` end now (on stop)."""
        ...


class RestListWatch:
    """Lists and watches a REST collection path, in full or as metadata only (PartialObjectMetadata)."""

    def __init__(self, http: httpx.Client, path: str | Callable[[], str], *, label_selector: str | None = None,
                 metadata_only: bool = False, headers: Callable[[], dict[str, str]] = dict,
                 watch_seconds: int = WATCH_SECONDS) -> None:
        self.http, self.selector, self.metadata_only = http, label_selector, metadata_only
        self._path = path
        self._headers = headers
        self.watch_seconds = watch_seconds
        self._response: httpx.Response | None = None
        self._aborted = False
        self._lock = threading.Lock()

    def accept(self, what: str) -> str:
        """Objects in full, or only their metadata (the API server then sends no spec, data or status)."""
        return f"application/json;as={what};g=meta.k8s.io;v=v1,application/json" if self.metadata_only \
            else "application/json"

    @property
    def path(self) -> str:
        """The collection's path; resolved on each use (a kind's discovery may fail until its CRD exists)."""
        return self._path if isinstance(self._path, str) else self._path()

    def _params(self) -> dict[str, str]:
        return {"labelSelector": self.selector} if self.selector else {}

    def list(self) -> Obj:
        response = self.http.get(self.path, params=self._params(), timeout=httpx.Timeout(60.0, connect=10.0),
                                 headers={**self._headers(), "Accept": self.accept("PartialObjectMetadataList")})
        if not response.is_success:
            raise ApiError(response.status_code, response.reason_phrase, response.content)
        listing: Obj = response.json()
        return listing

    def watch(self, version: str) -> Iterator[Obj]:
        params = {**self._params(), "watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(self.watch_seconds)}
        headers = {**self._headers(), "Accept": self.accept("PartialObjectMetadata")}
        timeout = httpx.Timeout(10.0, read=self.watch_seconds + 30.0)
        with self.http.stream("GET", self.path, params=params, headers=headers, timeout=timeout) as response:
            if not response.is_success:
                raise ApiError(response.status_code, response.reason_phrase, response.read())
            with self._lock:
                if self._aborted:  # stopped while the request was on its way
                    return
                self._response = response
            try:
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
            finally:
                with self._lock:
                    self._response = None

    def abort(self) -> None:
        """End the running watch and refuse new ones (on stop).

        The socket is shut down: closing it would not wake the thread blocked reading it.
        """
        with self._lock:
            self._aborted = True
            response = self._response
        if response is None:
            return
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Backoff:
    """Exponential delays after errors, reset by a success."""

    def __init__(self, first: float = 0.2, limit: float = 5.0) -> None:
        self.first, self.limit = first, limit
        self.next = first

    def failed(self) -> float:
        """The delay to wait now; the next one doubles, up to `limit`."""
        delay, self.next = self.next, min(self.next * 2, self.limit)
        return delay

    def succeeded(self) -> None:
        self.next = self.first


class Relist(Exception):
    """The watch's version expired (410 Gone): only a new list can go on."""


class Informer:
    """A collection kept in memory by list + watch; `synced` is set once the first list is stored.

    `keep` decides what of each object is held (whole, slimmed, metadata only); `typed` fills in
    apiVersion and kind, which a list's items lack and `keep` may depend on. `put` is the
    write-through of our own writes (read-your-writes before the watch event arrives).
    """

    def __init__(self, source: ListWatch, *, name: str, keep: Callable[[Obj], Obj] = identity,
                 typed: tuple[str, str] | None = None, backoff: Backoff | None = None, start: bool = True) -> None:
        self.source, self.name, self._keep, self._typed = source, name, keep, typed
        self._backoff = backoff or Backoff()
        self._store: dict[tuple[str, str], Obj] = {}
        self._gone: dict[tuple[str, str], int] = {}
        """Objects the watch saw deleted, with the version of their deletion (see `put`)."""
        self._told: dict[tuple[str, str], str] = {}
        """The version of each object the listeners last heard of: a relist reports against this,
        not against the store, which also holds our own writes (`put`) no event has announced."""
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self.synced = threading.Event()
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer-{name}", daemon=True)
        if start:
            self.start()

    # -- reading

    def has_synced(self) -> bool:
        return self.synced.is_set()

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._store.get((namespace, name))

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._store.values())

    def listen(self, listener: Listener) -> None:
        """Call `listener(type, object)` after each change; a late listener first hears every stored object as ADDED."""
        with self._lock:
            self._listeners.append(listener)
            known = list(self._store.values())
        self._notify([("ADDED", obj) for obj in known], [listener])

    def put(self, obj: Obj) -> None:
        """Store one object we just wrote, unless the watch already knows better.

        The answer to our write can reach us after the watch's event of a later change, or of the
        object's deletion: storing it then would bring back an older object, or a deleted one,
        until the next list.
        """
        key = object_key(obj)
        version = version_number(obj)
        with self._lock:
            gone = self._gone.get(key)
            if gone is not None and (version is None or gone >= version):
                return
            held_version = version_number(self._store.get(key))
            if held_version is not None and version is not None and held_version > version:
                return
            self._store[key] = self._keep(self._with_type(obj))

    # -- running

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """End the thread: no more events; a running watch is cut."""
        self.stopping.set()
        self.source.abort()
        if timeout is not None:
            self.join(timeout)

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end; whether it has."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _with_type(self, obj: Obj) -> Obj:
        if self._typed is not None:
            obj.setdefault("apiVersion", self._typed[0])
            obj.setdefault("kind", self._typed[1])
        return obj

    def _notify(self, changes: list[tuple[str, Obj]], listeners: list[Listener] | None = None) -> None:
        for listener in list(self._listeners) if listeners is None else listeners:
            for type_, obj in changes:
                try:
                    listener(type_, obj)
                except Exception:  # a listener's bug must not stop the informer
                    log.exception("informer %s: listener failed", self.name)

    def relist(self) -> str:
        """List, replace the store, tell listeners what changed; the version to watch from."""
        listing = self.source.list()
        # An empty PartialObjectMetadataList has `items: null`.
        fresh = {object_key(o): self._keep(self._with_type(o)) for o in listing.get("items") or []}
        with self._lock:
            old, self._store = self._store, fresh
            self._gone.clear()
            told, self._told = self._told, {key: resource_version(obj) for key, obj in fresh.items()}
        changes = [("DELETED", old[k]) for k in told if k not in fresh and k in old]
        for key, obj in fresh.items():
            before = told.get(key)
            if before is None:
                changes.append(("ADDED", obj))
            elif before != resource_version(obj):
                changes.append(("MODIFIED", obj))
        if changes:
            self._notify(changes)
        # After the listeners: an index a listener keeps is complete once `synced` says so.
        self.synced.set()
        return str((listing.get("metadata") or {}).get("resourceVersion") or "")

    def watch(self, version: str) -> str:
        """Apply events until the watch ends; the last version seen. Relist on 410 Gone."""
        for event in self.source.watch(version):
            if self.stopping.is_set():
                break
            type_, obj = event.get("type"), event.get("object") or {}
            if type_ == "ERROR":
                if obj.get("code") == 410:
                    raise Relist(obj.get("message") or "resource version expired")
                raise ApiError(int(obj.get("code") or 500), str(obj.get("reason") or "watch error"), json.dumps(obj))
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if type_ == "BOOKMARK":
                continue
            key = object_key(obj)
            kept = self._keep(self._with_type(obj))
            with self._lock:
                if type_ == "DELETED":
                    self._store.pop(key, None)
                    self._told.pop(key, None)
                    self._gone[key] = version_number(obj) or 0
                else:
                    # Watch events come in order, so a newer object held here is one of our own
                    # writes (`put`) the watch has not reached yet: going back to the event's older
                    # copy would make a reconcile decide on a status it has already replaced.
                    held = version_number(self._store.get(key))
                    event_version = version_number(obj)
                    if held is None or event_version is None or held <= event_version:
                        self._store[key] = kept
                    self._gone.pop(key, None)
                    self._told[key] = resource_version(obj)
            self._notify([(str(type_), kept)])
        return version

    def step(self, version: str | None) -> str | None:
        """One list (no `version`) or one watch; the version to go on from, None to list again.

        The thread repeats this; an exception (other than 410) is the caller's to back off from.
        """
        if version is None:
            return self.relist()
        try:
            return self.watch(version)
        except Relist as gone:
            log.debug("informer %s: %s; listing again", self.name, gone)
            return None
        except ApiError as error:
            if error.status == 410:
                return None
            raise

    def _run(self) -> None:
        version: str | None = None
        while not self.stopping.is_set():
            try:
                version = self.step(version)
                self._backoff.succeeded()
            except Exception as error:  # API server restarting, connection lost: back off, then list
                version = None
                if self.stopping.is_set():
                    return
                delay = self._backoff.failed()
                log.debug("informer %s: %s; again in %.1fs", self.name, error, delay)
                self.stopping.wait(delay)
