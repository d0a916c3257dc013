"""List+watch one collection into a local cache, re-listing after any watch error (like client-go)."""

from __future__ import annotations

import logging
import threading
import urllib.parse
from collections.abc import Callable

from .kubeclient import KubeClient, Obj

log = logging.getLogger(__name__)


def object_key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


class Reflector(threading.Thread):
    """List+watch one collection into a local cache, re-listing after any watch error (like client-go)."""

    def __init__(self, client: KubeClient, path: str, on_event: Callable[[str, Obj], None], name: str,
                 params: dict[str, str] | None = None) -> None:
        super().__init__(name=f"reflector-{name}", daemon=True)
        self.client = client
        self.path = path
        self.params = params or {}
        self.on_event = on_event
        self.store: dict[tuple[str, str], Obj] = {}
        self.lock = threading.Lock()
        self.synced = threading.Event()
        self.stopping = threading.Event()

    def get(self, namespace: str, name: str) -> Obj | None:
        with self.lock:
            return self.store.get((namespace, name))

    def items(self) -> list[Obj]:
        with self.lock:
            return list(self.store.values())

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        delay = 0.2
        while not self.stopping.is_set():
            try:
                rv: str | None = self._list()
                delay = 0.2
                while rv is not None and not self.stopping.is_set():
                    rv = self._watch(rv)
            except Exception as err:  # any failure: back off and re-list, never die
                if self.stopping.is_set():
                    return
                log.warning("%s: %s; re-listing in %.1fs", self.name, err, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 5.0)

    def _list(self) -> str:
        query = urllib.parse.urlencode(self.params)
        body = self.client.request("GET", f"{self.path}?{query}" if query else self.path, timeout=60)
        fresh = {object_key(o): o for o in body.get("items") or []}
        with self.lock:
            old = self.store
            self.store = fresh
        for k, obj in fresh.items():
            prev = old.get(k)
            if prev is None or prev["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self.on_event("MODIFIED" if prev else "ADDED", obj)
        for k, obj in old.items():
            if k not in fresh:
                self.on_event("DELETED", obj)
        self.synced.set()
        return str(body["metadata"]["resourceVersion"])

    def _watch(self, rv: str) -> str | None:
        """Watch from ``rv``; returns the last resourceVersion, or None when a re-list is needed."""
        params = {**self.params, "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": "240"}
        for event in self.client.watch(self.path, params, timeout=300):
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                log.info("%s: watch error %s; re-listing", self.name, obj.get("message"))
                return None
            new_rv = obj.get("metadata", {}).get("resourceVersion")
            if new_rv:
                rv = str(new_rv)
            if kind == "BOOKMARK":
                continue
            with self.lock:
                if kind == "DELETED":
                    self.store.pop(object_key(obj), None)
                else:
                    self.store[object_key(obj)] = obj
            self.on_event(str(kind), obj)
        return rv
