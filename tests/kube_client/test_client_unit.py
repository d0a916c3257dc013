"""The client's REST behaviour through its httpx transport seam (a scripted API server, no cluster):
write guard, identity, errors, discovery, create paths, configuration."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from smtpinfra_kube import ApiError, ApiException, Client, ConfigError, Discovery, KindNotFound, KubeConfig, Paused

CONFIG = KubeConfig(server="https://kube.test", token="t0ken")


class Recorder:
    """Answers every request from a route table ((method, path) → status, body) and records it."""

    def __init__(self, routes: dict[tuple[str, str], tuple[int, Any]]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status, body = self.routes.get((request.method, request.url.path), (404, {"kind": "Status", "code": 404}))
        return httpx.Response(status, json=body)


def client(routes: dict[tuple[str, str], tuple[int, Any]], **kwargs: Any) -> tuple[Client, Recorder]:
    recorder = Recorder(routes)
    return Client(CONFIG, transport=httpx.MockTransport(recorder), start_informers=False, **kwargs), recorder


SECRET: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "mail"},
                          "data": {}}


def test_a_write_the_guard_refuses_is_never_sent_and_reads_still_are():
    api, recorder = client({("GET", "/api/v1/namespaces/mail/secrets/s"): (200, SECRET)})
    asked: list[str] = []
    def refuse(path: str) -> bool:
        asked.append(path)
        return False

    api.identify("replica-a", refuse)
    with pytest.raises(Paused) as paused:
        asyncio.run(api.apply(SECRET))
    assert isinstance(paused.value, ApiException) and paused.value.status == 0
    with pytest.raises(Paused):
        api.request("DELETE", "/api/v1/namespaces/mail/secrets/s")
    assert recorder.requests == []
    assert asked == ["/api/v1/namespaces/mail/secrets/s"] * 2
    assert asyncio.run(api.get("v1", "Secret", "s", "mail")) == SECRET
    assert recorder.requests[0].headers["User-Agent"] == "smtp-infra-operator/replica-a"


def test_errors_are_api_exceptions_with_status_reason_and_body():
    api, _ = client({("POST", "/api/v1/namespaces/mail/secrets"): (422, {"kind": "Status", "message": "bad data"})})
    with pytest.raises(ApiException) as error:
        asyncio.run(api.post(SECRET))
    assert error.value.status == 422 and error.value.reason == "Unprocessable Entity"
    assert json.loads(error.value.body or "")["message"] == "bad data"
    assert isinstance(error.value, ApiError) and error.value.message == "bad data"


def test_get_of_a_missing_object_is_none_and_delete_of_one_is_false():
    api, _ = client({})
    assert asyncio.run(api.get("v1", "Secret", "nope", "mail")) is None
    assert asyncio.run(api.delete("v1", "Secret", "nope", "mail")) is False


def test_apply_is_a_forced_server_side_apply_with_the_field_manager():
    api, recorder = client({("PATCH", "/api/v1/namespaces/mail/secrets/s"): (200, {**SECRET, "metadata": {
        **SECRET["metadata"], "resourceVersion": "9"}})})
    result = asyncio.run(api.apply(SECRET))
    assert result["metadata"]["resourceVersion"] == "9"
    (request,) = recorder.requests
    assert request.headers["Content-Type"] == "application/apply-patch+yaml"
    assert dict(request.url.params) == {"fieldManager": "smtp-infra-operator", "force": "true"}
    assert json.loads(request.content) == SECRET


def test_create_returns_the_existing_object_on_conflict_and_create_if_absent_does_not_post_it():
    existing = {**SECRET, "data": {"k": "dg=="}}
    api, recorder = client({("POST", "/api/v1/namespaces/mail/secrets"): (409, {"code": 409}),
                            ("GET", "/api/v1/namespaces/mail/secrets/s"): (200, existing)})
    assert asyncio.run(api.create(SECRET)) == existing
    assert asyncio.run(api.create_if_absent(SECRET)) == (False, existing)
    assert [r.method for r in recorder.requests] == ["POST", "GET", "GET"]


def test_discovery_asks_once_per_group_and_remembers_absence_for_its_ttl():
    now = [0.0]
    asked: list[str] = []
    groups = {"/apis/monitoring.coreos.com/v1": {"resources": [
        {"kind": "ServiceMonitor", "name": "servicemonitors", "namespaced": True},
        {"kind": "ServiceMonitor", "name": "servicemonitors/status", "namespaced": True}]}}

    def get(path: str) -> Any:
        asked.append(path)
        if path not in groups:
            raise ApiError(404, "Not Found")
        return groups[path]

    discovery = Discovery(get, absent_ttl=30, clock=lambda: now[0])
    assert discovery.lookup("monitoring.coreos.com/v1", "ServiceMonitor") == ("servicemonitors", True)
    assert discovery.lookup("monitoring.coreos.com/v1", "ServiceMonitor") == ("servicemonitors", True)
    assert discovery.lookup("v1", "Secret") == ("secrets", True)  # static: no request
    with pytest.raises(KindNotFound):
        discovery.lookup("cert-manager.io/v1", "Certificate")
    with pytest.raises(KindNotFound):
        discovery.lookup("cert-manager.io/v1", "Certificate")
    assert asked == ["/apis/monitoring.coreos.com/v1", "/apis/cert-manager.io/v1"]
    groups["/apis/cert-manager.io/v1"] = {"resources": [{"kind": "Certificate", "name": "certificates",
                                                         "namespaced": True}]}
    now[0] = 31.0
    assert discovery.lookup("cert-manager.io/v1", "Certificate") == ("certificates", True)
    assert Discovery.path("cert-manager.io/v1", ("certificates", True), "mail", "tls") == \
        "/apis/cert-manager.io/v1/namespaces/mail/certificates/tls"


def test_kind_exists_through_the_client():
    api, _ = client({("GET", "/apis/monitoring.coreos.com/v1"): (200, {"resources": [
        {"kind": "ServiceMonitor", "name": "servicemonitors", "namespaced": True}]})})
    assert asyncio.run(api.kind_exists("monitoring.coreos.com/v1", "ServiceMonitor")) is True
    assert asyncio.run(api.kind_exists("monitoring.coreos.com/v1", "PodMonitor")) is False
    assert asyncio.run(api.kind_exists("cert-manager.io/v1", "Certificate")) is False


def kubeconfig(**user: Any) -> dict[str, Any]:
    return {"current-context": "b",
            "contexts": [{"name": "a", "context": {"cluster": "one", "user": "u1"}},
                         {"name": "b", "context": {"cluster": "two", "user": "u2"}}],
            "clusters": [{"name": "one", "cluster": {"server": "https://one:6443"}},
                         {"name": "two", "cluster": {"server": "https://two:6443/",
                                                     "certificate-authority-data": base64.b64encode(b"PEM").decode()}}],
            "users": [{"name": "u1", "user": {"token": "one"}}, {"name": "u2", "user": user}]}


def test_kubeconfig_current_context_named_context_and_relative_files(tmp_path: Path):
    config = KubeConfig.from_kubeconfig_data(kubeconfig(**{"client-certificate": "c.crt", "client-key": "c.key"}),
                                             base=tmp_path)
    assert config.server == "https://two:6443" and config.ca_data == "PEM"
    assert config.cert_file == str(tmp_path / "c.crt") and config.key_file == str(tmp_path / "c.key")
    other = KubeConfig.from_kubeconfig_data(kubeconfig(), context="a")
    assert other.server == "https://one:6443" and other.bearer_token() == "one"
    with pytest.raises(ConfigError):
        KubeConfig.from_kubeconfig_data(kubeconfig(), context="missing")
    (tmp_path / "token").write_text("from-file\n")
    assert KubeConfig.from_kubeconfig_data(kubeconfig(tokenFile="token"), base=tmp_path).bearer_token() == "from-file"


def test_in_cluster_reads_the_service_account_and_rereads_a_rotated_token(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError):
        KubeConfig.in_cluster(tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    (tmp_path / "token").write_text("first")
    config = KubeConfig.in_cluster(tmp_path)
    assert config.server == "https://[fd00::1]:6443" and config.ca_file == str(tmp_path / "ca.crt")
    assert config.bearer_token() == "first"
    (tmp_path / "token").write_text("rotated")
    assert config.bearer_token() == "rotated"
