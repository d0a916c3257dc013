"""A scripted API server behind `httpx.MockTransport`: lists and watches answered from queues.

A mock of the API server, named as such: these tests are about what the informer and the client
do with the answers (resume, relist, backoff, bookmarks, listeners), which a real server cannot be
made to produce on cue (a 410 Gone, a broken list).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx


def listing(version: int, *items: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": str(version)}, "items": list(items)}


def pod(name: str, version: int, ready: bool = True) -> dict[str, Any]:
    """A pod as a list's item: no apiVersion or kind (only the list carries them)."""
    return {"metadata": {"name": name, "namespace": "mail", "resourceVersion": str(version), "uid": f"u-{name}",
                         "annotations": {"smtpinfra.com/template-hash": "h1", "other.example/x": "y"}},
            "spec": {"containers": [{"name": "mta"}]},
            "status": {"phase": "Running", "podIP": "127.65.0.9",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"},
                                      {"type": "PodScheduled", "status": "True"}]}}


def event(type_: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_, "object": {"apiVersion": "v1", "kind": "Pod", **obj}}


def bookmark(version: int) -> dict[str, Any]:
    return {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                           "metadata": {"resourceVersion": str(version)}}}


class FakeApi:
    """Answers GET lists and watches of one collection from scripted queues and records every request.

    A list answer is a listing dict or an int (that HTTP status); a watch answer is a list of
    events (the watch then ends, as at the server's timeout) or an int status. With nothing left
    to answer, a watch blocks up to `idle` seconds and ends empty (a quiet real watch).
    """

    def __init__(self, lists: list[dict[str, Any] | int], watches: list[list[dict[str, Any]] | int],
                 idle: float = 0.5) -> None:
        self.lists, self.watches, self.idle = lists, watches, idle
        self.requests: list[httpx.Request] = []
        self.other: dict[tuple[str, str], httpx.Response] = {}
        self._lock = threading.Lock()
        self._quiet = threading.Event()
        self.transport = httpx.MockTransport(self.handle)

    def close(self) -> None:
        self._quiet.set()

    @property
    def watched_from(self) -> list[str]:
        return [r.url.params["resourceVersion"] for r in self.requests if r.url.params.get("watch") == "1"]

    @property
    def list_count(self) -> int:
        return sum(1 for r in self.requests if r.method == "GET" and r.url.params.get("watch") != "1"
                   and (r.method, r.url.path) not in self.other)

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.requests.append(request)
            if (request.method, request.url.path) in self.other:
                return self.other[(request.method, request.url.path)]
            if request.url.params.get("watch") == "1":
                answer: Any = self.watches.pop(0) if self.watches else None
            else:
                answer = self.lists.pop(0) if self.lists else 503
        if answer is None:
            self._quiet.wait(self.idle)
            return httpx.Response(200, content=b"")
        if isinstance(answer, int):
            return httpx.Response(answer, json={"kind": "Status", "code": answer, "message": f"status {answer}"})
        if isinstance(answer, dict):
            return httpx.Response(200, json=answer)
        return httpx.Response(200, content=b"".join(json.dumps(e).encode() + b"\n" for e in answer))
