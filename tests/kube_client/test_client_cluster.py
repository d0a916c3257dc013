"""The client against the real local control plane: every method the operator calls, with the
behaviour the operator relies on (caches, write-through, skipped re-applies, the write guard),
and the informer's watch resume on a real API server (410 Gone cannot be produced on cue here:
its relist is covered by the unit tests in test_informer.py)."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smtpinfra_kube import Client, KubeConfig, Paused
from smtpinfra_testenv.controlplane import ControlPlane
from tests.kube import wait_for

pytestmark = pytest.mark.kube

SELECTOR = "app.kubernetes.io/managed-by=kube-client-test"


class Counting(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """The real network transports, counting the requests that pass (method, path)."""

    def __init__(self, config: KubeConfig) -> None:
        verify = config.ssl_context() or True
        self.sync, self.async_ = httpx.HTTPTransport(verify=verify), httpx.AsyncHTTPTransport(verify=verify)
        self.sent: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _count(self, request: httpx.Request) -> None:
        if request.url.params.get("watch") != "1":
            with self._lock:
                self.sent.append((request.method, request.url.path))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._count(request)
        return self.sync.handle_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._count(request)
        return await self.async_.handle_async_request(request)

    def since(self, mark: int) -> list[tuple[str, str]]:
        with self._lock:
            return self.sent[mark:]


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"kube-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def run() -> Iterator[Callable[[Coroutine[Any, Any, Any]], Any]]:
    """Runs coroutines on one event loop for the whole test (the client's connections belong to it)."""
    with asyncio.Runner() as runner:
        yield runner.run


@pytest.fixture
def counted(control_plane: ControlPlane) -> Iterator[tuple[Client, Counting]]:
    config = KubeConfig.from_kubeconfig(Path(control_plane.kubeconfig))
    transport = Counting(config)
    client = Client(config, transport=transport)
    yield client, transport
    client.close()


def configmap(namespace: str, name: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by":
                                                                            "kube-client-test"}},
            "data": {"value": value}}


def test_rest_methods_behave_as_the_operator_expects(counted: tuple[Client, Counting], namespace: str, run: Any):
    client, _ = counted
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": namespace},
              "stringData": {"password": "first"}}

    async def scenario() -> None:
        assert await client.create(secret) is None
        again = await client.create({**secret, "stringData": {"password": "second"}})
        assert again is not None and again["data"]["password"] == "Zmlyc3Q="  # the first one, unmodified
        created, existing = await client.create_if_absent(secret)
        assert not created and existing["metadata"]["uid"] == again["metadata"]["uid"]
        other_secret = {**secret, "metadata": {"name": "other", "namespace": namespace}}
        created, other = await client.create_if_absent(other_secret)
        assert created and other["metadata"]["name"] == "other"
        assert (await client.get("v1", "Secret", "creds", namespace))["data"]["password"] == "Zmlyc3Q="
        assert await client.get("v1", "Secret", "missing", namespace) is None
        applied = await client.apply(configmap(namespace, "cfg", "1"))
        assert applied["data"] == {"value": "1"}
        assert "managedFields" not in (await client.list_objects("v1", "ConfigMap", namespace, SELECTOR))[0]["metadata"]
        assert [o["metadata"]["name"] for o in await client.list_objects("v1", "ConfigMap", namespace, SELECTOR)] \
            == ["cfg"]
        assert await client.kind_exists("v1", "ConfigMap")
        assert not await client.kind_exists("monitoring.coreos.com/v1", "ServiceMonitor")
        assert await client.delete("v1", "Secret", "other", namespace) is True
        assert await client.delete("v1", "Secret", "other", namespace) is False

    run(scenario())
    version = client.request("GET", "/version")
    assert version["major"] == "1"
    managers = client.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/cfg")["metadata"]["managedFields"]
    assert {m["manager"] for m in managers} == {"smtp-infra-operator"}


def test_caches_listeners_and_write_through(counted: tuple[Client, Counting], control_plane: ControlPlane,
                                            namespace: str, run: Any):
    client, transport = counted
    events: list[tuple[str, str]] = []
    metadata_events: list[str] = []
    client.watch_cached("v1", "ConfigMap", lambda t, o: events.append((t, o["metadata"]["name"])), SELECTOR)
    client.watch_metadata("v1", "Secret", lambda t, o: metadata_events.append(o["metadata"]["name"]))
    assert client.informer("v1", "ConfigMap", SELECTOR).synced.wait(60)
    assert client.informer("v1", "ConfigMap").synced.wait(60)  # the one get_cached reads

    async def scenario() -> None:
        await client.apply(configmap(namespace, "one", "1"))
        listed = await client.list_cached("v1", "ConfigMap", label_selector=SELECTOR)
        assert "one" in {o["metadata"]["name"] for o in listed}  # written through (or already watched)
        found = await client.find_cached("v1", "ConfigMap", "one", namespace, label_selector=SELECTOR)
        assert found is not None and found["data"] == {"value": "1"} and "managedFields" not in found["metadata"]
        mark = len(transport.sent)
        cached = await client.get_cached("v1", "ConfigMap", "one", namespace)
        assert cached is not None and cached["data"] == {"value": "1"}
        newer = await client.get_cached("v1", "ConfigMap", "one", namespace, generation=99)
        assert newer is not None
        gets = [p for m, p in transport.since(mark) if m == "GET" and p.endswith("/configmaps/one")]
        assert len(gets) == 1, "get_cached reads the informer, and the API only for a newer generation"
        await client.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls", "namespace": namespace},
                             "stringData": {"k": "v"}})
        wait_for(lambda: "tls" in metadata_events, timeout=30, what="the metadata watch")
        mark = len(transport.sent)
        first = await client.get_known("v1", "Secret", "tls", namespace)
        second = await client.get_known("v1", "Secret", "tls", namespace)
        assert first == second and first["data"] == {"k": "dg=="}
        assert "managedFields" not in first["metadata"], "what get_known keeps of our writes is slimmed"
        assert transport.since(mark) == [], "the version our create made is known: no request"

    run(scenario())
    control_plane.kubectl("patch", "secret", "tls", "-n", namespace, "-p", json.dumps({"stringData": {"k": "w"}}))
    wait_for(lambda: run(client.get_known("v1", "Secret", "tls", namespace))["data"] == {"k": "dw=="},
             timeout=30, what="get_known to read the new version")
    assert run(client.get_known("v1", "Secret", "absent", namespace)) is None
    control_plane.kubectl("delete", "configmap", "one", "-n", namespace)
    wait_for(lambda: ("DELETED", "one") in events, timeout=30, what="the DELETED event")
    assert ("ADDED", "one") in events or ("MODIFIED", "one") in events


def test_unchanged_children_are_not_applied_again_and_changes_by_others_are_reported(
        counted: tuple[Client, Counting], control_plane: ControlPlane, namespace: str, run: Any):
    client, transport = counted
    changed: list[str] = []
    client.track_applied(SELECTOR, on_changed=lambda meta: changed.append(meta["name"]))
    tracker = client.shared_informer(("v1", "ConfigMap", None, SELECTOR), metadata_only=True)
    assert tracker.synced.wait(60)
    child = configmap(namespace, "child", "1")
    path = f"/api/v1/namespaces/{namespace}/configmaps/child"

    def patches(mark: int) -> int:
        return sum(1 for m, p in transport.since(mark) if (m, p) == ("PATCH", path))

    run(client.apply(child))
    wait_for(lambda: tracker.get(namespace, "child") is not None, timeout=30, what="the tracker to see the child")
    mark = len(transport.sent)
    skipped = run(client.apply(child))
    assert patches(mark) == 0 and skipped["metadata"]["name"] == "child"
    run(client.apply(configmap(namespace, "child", "2")))  # new content: applied
    assert patches(mark) == 1
    control_plane.kubectl("label", "configmap", "child", "-n", namespace, "edited=by-hand")
    wait_for(lambda: "child" in changed, timeout=30, what="on_changed after an edit by someone else")
    mark = len(transport.sent)
    run(client.apply(configmap(namespace, "child", "2")))  # same content, but edited meanwhile
    assert patches(mark) == 1
    changed.clear()
    control_plane.kubectl("delete", "configmap", "child", "-n", namespace)
    wait_for(lambda: "child" in changed, timeout=30, what="on_changed after a deletion")


def test_a_paused_replica_sends_no_write_and_names_itself_in_the_audit_log(
        counted: tuple[Client, Counting], control_plane: ControlPlane, namespace: str, run: Any):
    client, transport = counted
    identity = f"replica-{uuid.uuid4().hex[:6]}"
    client.identify(identity, lambda path: False)
    mark = len(transport.sent)
    with pytest.raises(Paused):
        run(client.apply(configmap(namespace, "blocked", "1")))
    with pytest.raises(Paused):
        run(client.delete("v1", "Namespace", namespace))
    assert transport.since(mark) == []
    assert run(client.get("v1", "Namespace", namespace)) is not None
    audit = control_plane.audit_log
    assert audit is not None, "the test environment's control plane keeps an audit log"

    def entries() -> list[dict[str, Any]]:
        return [e for e in map(json.loads, audit.read_text().splitlines())
                if e.get("userAgent") == f"smtp-infra-operator/{identity}"]

    seen = wait_for(entries, timeout=30, what="the paused replica's read in the audit log")
    assert {e["verb"] for e in seen} == {"get"}


def test_informer_resumes_a_real_watch_without_listing_again(control_plane: ControlPlane, namespace: str):
    config = KubeConfig.from_kubeconfig(Path(control_plane.kubeconfig))
    transport = Counting(config)
    client = Client(config, transport=transport)
    heard: list[tuple[str, str]] = []
    informer = client.collection(f"/api/v1/namespaces/{namespace}/configmaps", name="cms", watch_seconds=1,
                                 listener=lambda t, o: heard.append((t, o["metadata"]["name"])), start=True)
    try:
        assert informer.synced.wait(60)
        control_plane.kubectl("create", "configmap", "first", "-n", namespace, "--from-literal=a=1")
        wait_for(lambda: ("ADDED", "first") in heard, timeout=30, what="the watch event")
        watches_before = len(transport.sent)
        control_plane.kubectl("create", "configmap", "second", "-n", namespace, "--from-literal=a=2")
        wait_for(lambda: ("ADDED", "second") in heard, timeout=30, what="an event after watches ended and resumed")
        lists = [p for m, p in transport.since(0) if m == "GET"]
        assert lists == [f"/api/v1/namespaces/{namespace}/configmaps"], "watches resumed without a new list"
        assert len(transport.sent) == watches_before
        assert informer.get(namespace, "second")["data"] == {"a": "2"}
    finally:
        informer.stop(timeout=30)
    client.close()


def test_requests_share_one_http2_connection(control_plane: ControlPlane, run: Any):
    """The operator's requests are multiplexed over HTTP/2 (with HTTP/1.1 the connection pool's
    bookkeeping, a poll per pooled connection per request, was a ninth of its CPU at scale); the
    informers' lists and watches are not."""
    client = Client(KubeConfig.from_kubeconfig(Path(control_plane.kubeconfig)), start_informers=False)

    async def scenario() -> tuple[httpx.AsyncClient, list[str]]:
        http = client._async()
        answers = await asyncio.gather(*(http.get("/version", headers=client.headers()) for _ in range(8)))
        return http, [a.http_version for a in answers]

    try:
        requests, versions = run(scenario())
        assert versions == ["HTTP/2"] * 8
        # Watches stay on connections of their own: offered h2 through a shared TLS context, they were
        # multiplexed onto one connection, where a thread blocked reading its watch stalled the others.
        # httpcore sets ALPN on the context at each connect, so a shared context raced between threads.
        contexts = [c._transport._pool._ssl_context for c in (client._watch_http, client._http, requests)]
        assert len({id(c) for c in contexts}) == 3, "each client has a TLS context of its own"
        for http in (client._watch_http, client._http):
            assert http.get("/version", headers=client.headers()).http_version == "HTTP/1.1"
        informer = client.informer("v1", "Namespace")
        informer.start()
        assert informer.synced.wait(30)
    finally:
        client.close()
