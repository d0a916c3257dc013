"""The informer's list, watch, resume and re-list, driven through its transport seam (no cluster).

A scripted transport answers the lists and watches in turn; the tests step the informer as its
thread would and check the store and what listeners were told.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from smtpinfra_operator.kube import ApiException, Informer


def pod(name: str, version: int, ready: bool = True) -> dict[str, Any]:
    """A pod as a list's item: no apiVersion or kind (only the list carries them)."""
    return {"metadata": {"name": name, "namespace": "mail", "resourceVersion": str(version),
                         "annotations": {"smtpinfra.com/template-hash": "h1", "other.example/x": "y"}},
            "spec": {"containers": [{"name": "mta"}]},
            "status": {"phase": "Running", "podIP": "127.65.0.9",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"},
                                      {"type": "PodScheduled", "status": "True"}]}}


def event(type_: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_, "object": {"apiVersion": "v1", "kind": "Pod", **obj}}


class Script:
    """Answers list and watch calls from queues, and records the versions watches started from."""

    def __init__(self, lists: list[dict[str, Any]], watches: list[list[dict[str, Any]]]) -> None:
        self.lists, self.watches = lists, watches
        self.watched_from: list[str] = []

    def list(self, informer: Informer) -> dict[str, Any]:
        return self.lists.pop(0)

    def watch(self, informer: Informer, version: str) -> Iterator[dict[str, Any]]:
        self.watched_from.append(version)
        yield from self.watches.pop(0)


def listing(version: int, *items: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": str(version)}, "items": list(items)}


def informer(script: Script) -> tuple[Informer, list[tuple[str, str]]]:
    inf = Informer("v1", "Pod", None, "app=mta", transport=script, start=False)
    seen: list[tuple[str, str]] = []
    inf.listen(lambda type_, obj: seen.append((type_, obj["metadata"]["name"])))
    return inf, seen


def test_first_list_syncs_and_keeps_a_listed_pods_readiness_and_own_annotations():
    script = Script([listing(10, pod("a", 5), pod("b", 6, ready=False))], [])
    inf, seen = informer(script)
    assert not inf.synced.is_set()
    assert inf.step(None) == "10"
    assert inf.synced.is_set()
    a = inf.get("mail", "a")
    assert a is not None
    assert a["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    assert a["metadata"]["annotations"] == {"smtpinfra.com/template-hash": "h1"}
    assert "spec" not in a
    assert sorted(seen) == [("ADDED", "a"), ("ADDED", "b")]


def test_watch_applies_events_skips_bookmarks_and_resumes_from_the_last_version():
    script = Script([listing(10, pod("a", 5))],
                    [[event("MODIFIED", pod("a", 11, ready=False)), event("ADDED", pod("c", 12)),
                      {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}],
                     [event("DELETED", pod("c", 16))]])
    inf, seen = informer(script)
    version = inf.step(None)
    version = inf.step(version)
    assert version == "15"
    assert inf.get("mail", "a")["status"]["conditions"] == [{"type": "Ready", "status": "False"}]
    assert inf.get("mail", "c") is not None
    version = inf.step(version)  # the watch ended normally: the next one resumes, no list
    assert script.watched_from == ["10", "15"]
    assert version == "16" and inf.get("mail", "c") is None
    assert seen[1:] == [("MODIFIED", "a"), ("ADDED", "c"), ("DELETED", "c")]


def test_an_expired_version_relists_and_reports_what_went_while_nobody_watched():
    script = Script([listing(10, pod("a", 5), pod("b", 6)), listing(40, pod("b", 30), pod("d", 31))],
                    [[{"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}]])
    inf, seen = informer(script)
    version = inf.step(None)
    with pytest.raises(ApiException):
        inf.step(version)  # the thread then lists again
    seen.clear()
    assert inf.step(None) == "40"
    assert {i["metadata"]["name"] for i in inf.items()} == {"b", "d"}
    assert ("DELETED", "a") in seen and ("ADDED", "d") in seen


def test_a_listener_that_joins_late_hears_of_every_stored_object():
    script = Script([listing(10, pod("a", 5), pod("b", 6))], [])
    inf, _ = informer(script)
    inf.step(None)
    late: list[str] = []
    inf.listen(lambda type_, obj: late.append(f"{type_} {obj['metadata']['name']}"))
    assert sorted(late) == ["ADDED a", "ADDED b"]


def test_an_empty_metadata_list_syncs():
    """The API server answers an empty PartialObjectMetadataList with `items: null`."""
    script = Script([{"metadata": {"resourceVersion": "7"}, "items": None}], [])
    inf = Informer("policy/v1", "PodDisruptionBudget", None, "app=mta", metadata_only=True, transport=script,
                   start=False)
    assert inf.step(None) == "7"
    assert inf.synced.is_set() and inf.items() == []


def test_our_write_answered_after_a_later_event_does_not_bring_back_an_older_or_deleted_object():
    """`remember` puts what a write returned; the watch may already have seen newer news."""
    script = Script([listing(10, pod("a", 5), pod("b", 6))],
                    [[event("MODIFIED", pod("a", 20, ready=False)), event("DELETED", pod("b", 21))]])
    inf, _ = informer(script)
    inf.step(inf.step(None))
    inf.put({"apiVersion": "v1", "kind": "Pod", **pod("a", 15)})  # the answer to a write before version 20
    assert inf.get("mail", "a")["metadata"]["resourceVersion"] == "20"
    inf.put({"apiVersion": "v1", "kind": "Pod", **pod("b", 18)})  # written just before it was deleted
    assert inf.get("mail", "b") is None
    inf.put({"apiVersion": "v1", "kind": "Pod", **pod("a", 25)})
    assert inf.get("mail", "a")["metadata"]["resourceVersion"] == "25"
