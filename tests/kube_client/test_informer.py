"""The informer's list, watch, resume, relist, backoff, bookmarks and listeners, through the
client's httpx transport seam (a scripted API server, no cluster)."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from typing import Any

import httpx
import pytest

from smtpinfra_kube import ApiException, Backoff, Client, Informer, KubeConfig, RestListWatch
from tests.kube_client.fakeapi import FakeApi, bookmark, event, listing, pod

CONFIG = KubeConfig(server="https://kube.test", token="t0ken")


def stepped(fake: FakeApi) -> tuple[Informer, list[tuple[str, str]]]:
    """The client's informer of MTA pods, not started: the test steps it as its thread would."""
    client = Client(CONFIG, transport=fake.transport, start_informers=False)
    informer = client.informer("v1", "Pod", label_selector="app=mta")
    seen: list[tuple[str, str]] = []
    informer.listen(lambda type_, obj: seen.append((type_, obj["metadata"]["name"])))
    return informer, seen


def test_first_list_syncs_and_keeps_what_the_operator_reads_of_a_pod():
    fake = FakeApi([listing(10, pod("a", 5), pod("b", 6, ready=False))], [])
    informer, seen = stepped(fake)
    assert not informer.has_synced()
    assert informer.step(None) == "10"
    assert informer.has_synced()
    a = informer.get("mail", "a")
    assert a is not None
    assert a["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    assert a["metadata"]["annotations"] == {"smtpinfra.com/template-hash": "h1"}
    assert a["kind"] == "Pod" and "spec" not in a
    assert sorted(seen) == [("ADDED", "a"), ("ADDED", "b")]
    (request,) = fake.requests
    assert request.url.path == "/api/v1/pods" and request.url.params["labelSelector"] == "app=mta"
    assert request.headers["Authorization"] == "Bearer t0ken"


def test_watch_applies_events_takes_a_bookmarks_version_and_resumes_without_a_list():
    fake = FakeApi([listing(10, pod("a", 5))],
                   [[event("MODIFIED", pod("a", 11, ready=False)), event("ADDED", pod("c", 12)), bookmark(15)],
                    [event("DELETED", pod("c", 16))]])
    informer, seen = stepped(fake)
    version = informer.step(informer.step(None))
    assert version == "15"
    assert informer.get("mail", "a")["status"]["conditions"] == [{"type": "Ready", "status": "False"}]
    assert informer.get("mail", "c") is not None
    version = informer.step(version)  # the watch ended as at the server's timeout: resume, no list
    assert fake.watched_from == ["10", "15"]
    assert fake.list_count == 1
    assert version == "16" and informer.get("mail", "c") is None
    assert seen[1:] == [("MODIFIED", "a"), ("ADDED", "c"), ("DELETED", "c")]
    watch = fake.requests[1]
    assert watch.url.params["allowWatchBookmarks"] == "true" and watch.url.params["labelSelector"] == "app=mta"


@pytest.mark.parametrize("gone", [
    [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}],
    410,
], ids=["error-event", "http-status"])
def test_410_gone_lists_again_and_reports_only_what_changed_meanwhile(gone: Any):
    fake = FakeApi([listing(10, pod("a", 5), pod("b", 6), pod("e", 7)),
                    listing(40, pod("b", 30), pod("d", 31), pod("e", 7))], [gone])
    informer, seen = stepped(fake)
    version = informer.step(None)
    seen.clear()
    assert informer.step(version) is None  # the version expired: the next step lists
    assert informer.step(None) == "40"
    assert {i["metadata"]["name"] for i in informer.items()} == {"b", "d", "e"}
    assert sorted(seen) == [("ADDED", "d"), ("DELETED", "a"), ("MODIFIED", "b")]  # e did not change


def test_other_watch_errors_are_raised_for_the_thread_to_back_off():
    fake = FakeApi([listing(10)], [[{"type": "ERROR", "object": {"code": 500, "reason": "InternalError"}}], 503])
    informer, _ = stepped(fake)
    version = informer.step(None)
    with pytest.raises(ApiException) as error:
        informer.step(version)
    assert error.value.status == 500
    with pytest.raises(ApiException) as error:
        informer.step(version)
    assert error.value.status == 503


def test_backoff_doubles_up_to_its_limit_and_resets_on_success():
    backoff = Backoff(first=0.5, limit=3.0)
    assert [backoff.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.succeeded()
    assert backoff.failed() == 0.5


class RecordingBackoff(Backoff):
    def __init__(self) -> None:
        super().__init__(first=0.01, limit=0.04)
        self.delays: list[float] = []

    def failed(self) -> float:
        self.delays.append(super().failed())
        return self.delays[-1]


def test_the_thread_backs_off_after_failed_lists_then_syncs_and_watches_from_the_list():
    fake = FakeApi([500, 503, 500, listing(20, pod("a", 19))], [[event("ADDED", pod("b", 21))]])
    http = httpx.Client(base_url="https://kube.test", transport=fake.transport)
    backoff = RecordingBackoff()
    heard = threading.Event()
    informer = Informer(RestListWatch(http, "/api/v1/pods"), name="pods", backoff=backoff, start=False)
    informer.listen(lambda type_, obj: heard.set() if obj["metadata"]["name"] == "b" else None)
    informer.start()
    try:
        assert informer.synced.wait(30)
        assert heard.wait(30)
    finally:
        informer.stop(timeout=30)
        fake.close()
    assert backoff.delays == [0.01, 0.02, 0.04]
    assert fake.watched_from[0] == "20"
    assert informer.get("mail", "b")["spec"] == {"containers": [{"name": "mta"}]}  # kept whole


def test_a_broken_watch_backs_off_and_lists_again():
    fake = FakeApi([listing(10, pod("a", 5)), listing(30, pod("a", 25))], [500])
    http = httpx.Client(base_url="https://kube.test", transport=fake.transport)
    changed = threading.Event()
    informer = Informer(RestListWatch(http, "/api/v1/pods"), name="pods", backoff=RecordingBackoff(), start=False)
    informer.listen(lambda type_, obj: changed.set() if type_ == "MODIFIED" else None)
    informer.start()
    try:
        assert changed.wait(30)
    finally:
        informer.stop(timeout=30)
        fake.close()
    assert fake.list_count == 2
    assert informer.get("mail", "a")["metadata"]["resourceVersion"] == "25"


def test_a_late_listener_hears_of_every_stored_object_and_a_failing_listener_stops_nothing():
    fake = FakeApi([listing(10, pod("a", 5), pod("b", 6))], [[event("ADDED", pod("c", 12))]])
    informer, seen = stepped(fake)
    informer.step(None)
    late: list[str] = []
    informer.listen(lambda type_, obj: late.append(f"{type_} {obj['metadata']['name']}"))

    def broken(type_: str, obj: dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    informer.listen(broken)
    assert sorted(late) == ["ADDED a", "ADDED b"]
    informer.step("10")
    assert late[-1] == "ADDED c" and seen[-1] == ("ADDED", "c")


def test_a_metadata_only_informer_asks_for_partial_metadata_and_syncs_on_an_empty_list():
    """The API server answers an empty PartialObjectMetadataList with `items: null`."""
    fake = FakeApi([{"metadata": {"resourceVersion": "7"}, "items": None}], [])
    client = Client(CONFIG, transport=fake.transport, start_informers=False)
    seen: list[str] = []
    client.watch_metadata("v1", "Secret", lambda type_, obj: seen.append(type_))
    informer = client.shared_informer(("v1", "Secret", None, None), metadata_only=True)
    assert informer.step(None) == "7"
    assert informer.has_synced() and informer.items() == [] and seen == []
    assert "as=PartialObjectMetadataList" in fake.requests[0].headers["Accept"]


def test_our_write_answered_after_a_later_event_does_not_bring_back_an_older_or_deleted_object():
    fake = FakeApi([listing(10, pod("a", 5), pod("b", 6))],
                   [[event("MODIFIED", pod("a", 20, ready=False)), event("DELETED", pod("b", 21))]])
    informer, _ = stepped(fake)
    informer.step(informer.step(None))
    informer.put({"apiVersion": "v1", "kind": "Pod", **pod("a", 15)})  # the answer to a write before version 20
    assert informer.get("mail", "a")["metadata"]["resourceVersion"] == "20"
    informer.put({"apiVersion": "v1", "kind": "Pod", **pod("b", 18)})  # written just before it was deleted
    assert informer.get("mail", "b") is None
    informer.put({"apiVersion": "v1", "kind": "Pod", **pod("a", 25)})
    assert informer.get("mail", "a")["metadata"]["resourceVersion"] == "25"


def test_a_watch_event_older_than_our_write_does_not_replace_it():
    """The watch delivers the object as it was before our write (its event was on the way when
    the write's answer came back): the store keeps our write, and the listeners still hear the event."""
    fake = FakeApi([listing(10, pod("a", 5))],
                   [[event("MODIFIED", pod("a", 12, ready=False))], [event("MODIFIED", pod("a", 30, ready=False))]])
    informer, seen = stepped(fake)
    version = informer.step(None)
    informer.put({"apiVersion": "v1", "kind": "Pod", **pod("a", 20)})  # our write, answered at version 20
    version = informer.step(version)
    assert informer.get("mail", "a")["metadata"]["resourceVersion"] == "20"
    assert informer.get("mail", "a")["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    informer.step(version)
    assert informer.get("mail", "a")["metadata"]["resourceVersion"] == "30"
    assert informer.get("mail", "a")["status"]["conditions"] == [{"type": "Ready", "status": "False"}]
    assert seen[-2:] == [("MODIFIED", "a"), ("MODIFIED", "a")]


def test_stop_ends_the_thread_during_a_quiet_watch():
    fake = FakeApi([listing(10)], [], idle=60)
    http = httpx.Client(base_url="https://kube.test", transport=fake.transport)
    informer = Informer(RestListWatch(http, "/api/v1/pods"), name="pods")
    assert informer.synced.wait(30)
    informer.stop()
    fake.close()  # a mock cannot be cut like a socket: end its quiet watch
    assert informer.join(30)


class QuietWatchServer(http.server.ThreadingHTTPServer):
    """A real HTTP server on loopback: lists are empty, a watch sends its headers and then nothing."""

    daemon_threads = True

    def __init__(self) -> None:
        self.release = threading.Event()
        self.watching = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if "watch=1" in self.path:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.flush()
                    server.watching.set()
                    server.release.wait(120)
                    return
                body = b'{"metadata": {"resourceVersion": "1"}, "items": []}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(("127.0.0.1", 0), Handler)


def test_stop_cuts_a_watch_that_is_blocked_reading_a_real_socket():
    server = QuietWatchServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    http_client = httpx.Client(base_url=f"http://{host!s}:{port}")
    informer = Informer(RestListWatch(http_client, "/api/v1/pods"), name="pods")
    try:
        assert informer.synced.wait(30)
        assert server.watching.wait(30)
        informer.stop()
        assert informer.join(10), "the watch's socket was shut down: the thread ended without the server's help"
    finally:
        server.release.set()
        server.shutdown()


def test_listeners_hear_the_first_list_before_synced_is_set():
    """An index a listener keeps (the Tenant index) is complete whenever `synced` says the informer is."""
    fake = FakeApi([listing(10, pod("a", 5), pod("b", 6))], [])
    client = Client(CONFIG, transport=fake.transport, start_informers=False)
    informer = client.informer("v1", "Pod", label_selector="app=mta")
    synced_when_heard: list[bool] = []
    informer.listen(lambda type_, obj: synced_when_heard.append(informer.has_synced()))
    informer.step(None)
    assert synced_when_heard == [False, False] and informer.has_synced()


def test_our_write_stored_before_the_first_list_is_still_announced_by_that_list():
    """A create answered while the first list is on its way: the list holds the object at the same
    version, and no watch event will come for it, so the list is where the listeners hear of it."""
    fake = FakeApi([listing(10, pod("a", 5), pod("b", 6))], [])
    informer, seen = stepped(fake)
    informer.put({"apiVersion": "v1", "kind": "Pod", **pod("b", 6)})
    informer.step(None)
    assert sorted(seen) == [("ADDED", "a"), ("ADDED", "b")]


def test_a_relist_reports_against_what_listeners_heard_not_our_unannounced_writes():
    fake = FakeApi([listing(10, pod("a", 5)), listing(40, pod("a", 20), pod("c", 21))], [410])
    informer, seen = stepped(fake)
    version = informer.step(None)
    informer.put({"apiVersion": "v1", "kind": "Pod", **pod("a", 20)})  # our write; its event is lost with the watch
    informer.put({"apiVersion": "v1", "kind": "Pod", **pod("c", 21)})
    seen.clear()
    assert informer.step(version) is None
    informer.step(None)
    assert sorted(seen) == [("ADDED", "c"), ("MODIFIED", "a")]


def test_an_smtpservers_dns_status_is_held_packed_compares_equal_and_reads_back():
    from smtpinfra_kube import Packed, thaw
    from smtpinfra_kube.objects import cached
    dns = {"provider": "none", "records": [{"name": f"d{i}.example", "type": "TXT", "state": "Required",
                                            "values": ["v=spf1 -all"]} for i in range(50)]}
    server = {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "SmtpServer",
              "metadata": {"name": "s", "namespace": "mail", "resourceVersion": "3"},
              "status": {"dns": dns, "readyReplicas": 1, "kopf": {"progress": {}}}}
    kept = cached(server)
    packed = kept["status"]["dns"]
    assert isinstance(packed, Packed) and packed == dns and dns == packed and packed.get("provider") == "none"
    assert packed != {**dns, "provider": "rfc2136"}
    assert thaw(packed) == dns and thaw(packed) is not thaw(packed)
    assert kept["status"]["readyReplicas"] == 1 and "kopf" not in kept["status"]
    with pytest.raises(TypeError):
        json.dumps(kept)  # never written out by accident as something else


def test_cached_objects_share_their_keys_and_short_strings():
    """Each watch event is its own JSON document: without interning, a thousand Tenants each held
    their own copies of the same keys, condition types, reasons and timestamps."""
    from smtpinfra_kube.objects import cached

    def tenant(name: str) -> dict[str, Any]:
        return json.loads(json.dumps({
            "apiVersion": "smtpinfra.com/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ok",
                                       "lastTransitionTime": "2026-12-03T12:00:00Z", "message": "x" * 65}]}}))

    one, two = cached(tenant("a")), cached(tenant("b"))
    c1, c2 = one["status"]["conditions"][0], two["status"]["conditions"][0]
    assert c1 == c2 and c1 is not c2
    assert c1["reason"] is c2["reason"] and c1["lastTransitionTime"] is c2["lastTransitionTime"]
    assert next(iter(c1)) is next(iter(c2))  # the keys too
    assert c1["message"] == c2["message"] and c1["message"] is not c2["message"]  # long text stays unshared


def test_a_known_object_keeps_everything_but_managed_fields_and_shares_its_strings():
    """Every Secret and Service the operator writes is remembered for `get_known`: each answer's
    managedFields and keys were its own copies (1,000 tenants' Secrets held ~6 MB of them)."""
    from smtpinfra_kube.objects import known

    def secret(name: str) -> dict[str, Any]:
        return json.loads(json.dumps({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": {"password": "cGFzcw=="},
            "metadata": {"name": name, "namespace": "t", "resourceVersion": "7", "annotations": {"a": "b"},
                         "managedFields": [{"manager": "smtp-infra", "fieldsV1": {"f:data": {}}}]},
            "status": {"loadBalancer": {}}}))

    answer = secret("one")
    one, two = known(answer), known(secret("two"))
    assert "managedFields" not in one["metadata"] and "managedFields" in answer["metadata"]  # the answer is untouched
    assert one["data"] == {"password": "cGFzcw=="} and one["metadata"]["annotations"] == {"a": "b"}
    assert one["status"] == {"loadBalancer": {}} and one["type"] == "Opaque"
    assert next(iter(one["metadata"])) is next(iter(two["metadata"]))


def test_our_write_of_an_object_a_full_informer_lists_is_not_kept_twice():
    """A tenant's credential Secret is in the full informer of tenant Secrets; `get_known` keeps its
    own copy only of what no full informer holds (the server's DKIM and token Secrets)."""
    client = Client(CONFIG, transport=FakeApi([], []).transport, start_informers=False)
    tenants_secrets = client.informer("v1", "Secret", label_selector="smtpinfra.com/tenant")

    def secret(name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "data": {"k": "dg=="},
                "metadata": {"name": name, "namespace": "t", "resourceVersion": "5", "labels": labels}}

    client.remember(secret("credentials", {"smtpinfra.com/tenant": "a"}))
    client.remember(secret("dkim", {"app": "mta"}))
    assert tenants_secrets.get("t", "credentials") is not None and tenants_secrets.get("t", "dkim") is None
    assert ("v1", "Secret", "t", "credentials") not in client._known
    assert client._known[("v1", "Secret", "t", "dkim")][1]["data"] == {"k": "dg=="}


def test_a_late_event_of_our_own_earlier_apply_is_not_a_change_by_somebody_else():
    """Under load the watch trails our writes: the event of our first apply can arrive after our second.
    Only an event newer than our last apply (and not of its version) is somebody else's change."""
    cm_path = "/api/v1/namespaces/mail/configmaps/child"

    def configmap(version: int, value: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap", "data": {"v": value},
                "metadata": {"name": "child", "namespace": "mail", "resourceVersion": str(version),
                             "labels": {"app": "mta"}}}

    def watch_event(version: int) -> dict[str, Any]:
        return {"type": "MODIFIED", "object": {"apiVersion": "v1", "kind": "ConfigMap",
                                               "metadata": configmap(version, "")["metadata"]}}

    fake = FakeApi([listing(10)], [[watch_event(11), watch_event(12), watch_event(13)]])
    client = Client(CONFIG, transport=fake.transport, start_informers=False)
    changed: list[str] = []
    client.track_applied("app=mta", on_changed=lambda meta: changed.append(meta["resourceVersion"]))
    tracker = client.shared_informer(("v1", "ConfigMap", None, "app=mta"), metadata_only=True)
    version = tracker.step(None)
    for answer in (11, 12):  # our two applies, answered before the watch tells of either
        fake.other[("PATCH", cm_path)] = httpx.Response(200, json=configmap(answer, str(answer)))
        asyncio.run(client.apply(configmap(0, str(answer))))
    tracker.step(version)  # then the watch: our 11 (late), our 12, somebody else's 13
    assert changed == ["13"]
