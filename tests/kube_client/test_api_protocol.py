"""`Client` is what the operator's controllers are given: it satisfies `KubeApi` in full.

Statically: mypy checks the assignment of a `Client` to a `KubeApi` below (`make lint` runs mypy
over the tests). At run time: every operation of `KubeApi` exists on `Client` with the same
parameters (names, kinds, defaults; extra ones only optional) and the same sync/async nature.
"""

from __future__ import annotations

import inspect

import httpx
import pytest

from smtpinfra_kube import Client, KubeApi, KubeConfig

pytestmark = pytest.mark.kube

OPERATIONS = ["apply", "create", "create_if_absent", "delete", "find_cached", "get", "get_cached", "get_known",
              "identify", "informer", "kind_exists", "list_cached", "list_objects", "remember", "request",
              "track_applied", "watch_cached", "watch_metadata"]


def client() -> Client:
    return Client(KubeConfig(server="https://kube.test"), transport=httpx.MockTransport(lambda r: httpx.Response(404)),
                  start_informers=False)


def test_a_client_is_a_kube_api():
    api: KubeApi = client()  # mypy: Client satisfies the Protocol
    assert isinstance(api, Client)


def test_the_protocol_lists_the_operations_the_operator_uses():
    protocol = {name for name, _ in inspect.getmembers(KubeApi, inspect.isfunction) if not name.startswith("_")}
    assert protocol == {*OPERATIONS}


def parameters(function: object) -> list[tuple[str, object, object]]:
    signature = inspect.signature(function)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in signature.parameters.values() if p.name != "self"]


@pytest.mark.parametrize("name", OPERATIONS)
def test_each_method_has_the_protocols_signature(name: str):
    expected = getattr(KubeApi, name)
    candidate = getattr(client(), name)
    assert inspect.iscoroutinefunction(candidate) == inspect.iscoroutinefunction(expected)
    got, want = parameters(candidate), parameters(expected)
    assert got[:len(want)] == want, name
    assert all(default is not inspect.Parameter.empty for _, _, default in got[len(want):]), \
        f"{name}: extra parameters must be optional"
